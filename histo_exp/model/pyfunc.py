"""The old home of the pyfunc model class, kept for the models logged before it moved to
``histo_exp.tracking.pyfunc``: their pickle names ``histo_exp.model.pyfunc.IdcProbability``, and a
process that has imported histo_exp loads that name from here rather than from the model's own code copy."""

from histo_exp.tracking.pyfunc import KERAS_ARTIFACT, IdcProbability  # noqa: F401
