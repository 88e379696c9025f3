"""requirements-lock.txt: the exact versions `make install` puts in .venv, as pip constraints.

    python scripts/lock.py write [LOCK]   resolve pyproject.toml's ranges anew (newest within them), write LOCK
    python scripts/lock.py check [LOCK]   in an installed environment: LOCK agrees with pyproject.toml and
                                          with every package's own requirements, and is what is installed

`write` asks pip itself (the installer `make install` uses) what it would install into an empty
environment, so the lock is pip's resolution, not another resolver's. `write` needs only the standard
library; `check` needs `packaging`, which the locked environment has.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements-lock.txt"
PROJECT = "histo-exp"
EXTRAS = ("dev",)  # what `make install` installs: .[dev], which brings tf, jax and ray
TOOLS = ("pip",)  # installed into .venv before the project: locked too


def normalize(name: str) -> str:
    """PEP 503's name: 'Keras_Tuner' and 'keras-tuner' are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(text: str) -> dict[str, str]:
    """``name==version`` lines, comments and blank lines ignored; a name twice is an error."""
    pins: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"line {number} of the lock is {line!r}: expected name==version")
        key = normalize(name.strip())
        if key in pins:
            raise ValueError(f"line {number} of the lock pins {key} a second time")
        pins[key] = version.strip()
    return pins


# ---- write: pip's own resolution of pyproject.toml's ranges --------------------------------------------


def resolve(python: str, repo: Path = REPO) -> dict[str, str]:
    """What pip would install for ``.[dev]``, its build requirements and pip itself into an empty environment."""
    build = tomllib.loads((repo / "pyproject.toml").read_text())["build-system"]["requires"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), f"{repo}[{','.join(EXTRAS)}]", *build, *TOOLS], check=True)
        chosen = json.loads(report.read_text())["install"]
    pins = {normalize(item["metadata"]["name"]): item["metadata"]["version"] for item in chosen}
    pins.pop(PROJECT, None)
    return dict(sorted(pins.items()))


def lock_text(pins: Mapping[str, str], pip_version: str) -> str:
    header = (
        "# The exact versions `make install` installs into .venv (and so make run, make test and .ci/run):\n"
        "# pip constraints (-c), checked after every install. pyproject.toml keeps ranges; this file is\n"
        "# refreshed on purpose by `make lock` (docs/development.md: when and how).\n"
        f"# Resolved by pip {pip_version} on {datetime.date.today()} for CPython "
        f"{platform.python_version_tuple()[0]}.{platform.python_version_tuple()[1]} on "
        f"{platform.system()} {platform.machine()}, extras: {', '.join(EXTRAS)}.\n"
    )
    return header + "".join(f"{name}=={version}\n" for name, version in pins.items())


def write(lock: Path) -> None:
    """A throwaway venv with the newest pip resolves the ranges; the lock is written whole, then renamed."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "venv", tmp], check=True)
        python = str(Path(tmp) / "bin" / "python")
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--upgrade", *TOOLS], check=True)
        pip_version = subprocess.run([python, "-m", "pip", "--version"], check=True, capture_output=True,
                                     text=True).stdout.split()[1]
        pins = resolve(python)
    partial = lock.with_suffix(".partial")
    partial.write_text(lock_text(pins, pip_version))
    partial.replace(lock)
    print(f"{lock.name}: {len(pins)} packages, pip {pip_version}. Now `make test` (it reinstalls from the new "
          "lock) and commit the lock with the suite green.")


# ---- check: the lock against pyproject.toml, the packages' own requirements and what is installed ------


def project_requires(pyproject: Mapping) -> list[str]:
    """The project's requirements as its metadata states them (extras as ``extra == "..."`` markers)."""
    project = pyproject["project"]
    reqs = list(project.get("dependencies", []))
    for extra, items in project.get("optional-dependencies", {}).items():
        for item in items:
            req, _, marker = item.partition(";")
            only = f'extra == "{extra}"'
            reqs.append(f"{req}; ({marker}) and {only}" if marker.strip() else f"{req}; {only}")
    return reqs


def installed_requires(name: str) -> list[str]:
    try:
        return importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return []


def disagreements(pins: Mapping[str, str], pyproject: Mapping,
                  requires: Callable[[str], list[str]] = installed_requires,
                  extras: Iterable[str] = EXTRAS) -> list[str]:
    """Every requirement reachable from the project with ``extras`` (markers evaluated here) is locked, at a
    version its specifier admits; and nothing is locked that nothing requires. One line per problem."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = normalize(pyproject["project"]["name"])
    problems: list[str] = []
    needed: set[str] = set(TOOLS) | {normalize(Requirement(r).name) for r in pyproject["build-system"]["requires"]}
    queue: list[tuple[str, frozenset[str]]] = [(project, frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while queue:
        name, wanted = queue.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        texts = project_requires(pyproject) if name == project else requires(name)
        for req in map(Requirement, texts):
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", *wanted)):
                continue
            dep = normalize(req.name)
            if dep != project:
                needed.add(dep)
                if dep not in pins:
                    problems.append(f"{dep} ({req}, required by {name}) is not locked")
                    continue
                if not req.specifier.contains(Version(pins[dep]), prereleases=True):
                    problems.append(f"{dep}=={pins[dep]} is locked, but {name} requires {req}")
            queue.append((dep, frozenset(req.extras) | (wanted if dep == project else frozenset())))
    problems += [f"{name}=={pins[name]} is locked but nothing requires it" for name in sorted(set(pins) - needed)]
    return list(dict.fromkeys(problems))  # a package reached twice (with more extras) says it once


def installed() -> dict[str, str]:
    """Every distribution in this environment but the project itself, by normalized name."""
    found = {normalize(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    found.pop(PROJECT, None)
    return found


def drift(pins: Mapping[str, str], found: Mapping[str, str]) -> list[str]:
    """Where the environment differs from the lock: another version, or a package the lock does not name."""
    return ([f"{name} {found[name]} is installed, the lock says {pins[name]}"
             for name in sorted(set(pins) & set(found)) if pins[name] != found[name]]
            + [f"{name} {found[name]} is installed but not locked" for name in sorted(set(found) - set(pins))])


def check(lock: Path) -> int:
    pins = read_lock(lock.read_text())
    pyproject = tomllib.loads((lock.parent / "pyproject.toml").read_text())
    problems = disagreements(pins, pyproject) + drift(pins, installed())
    if problems:
        print(f"{lock.name} does not match this environment or pyproject.toml:\n  " + "\n  ".join(problems)
              + "\nA changed pyproject.toml needs a new lock: `make lock`, then `make test`.", file=sys.stderr)
        return 1
    print(f"installed exactly the {len(pins)} versions of {lock.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("write", "check"))
    parser.add_argument("lock", nargs="?", type=Path, default=LOCK)
    args = parser.parse_args(argv)
    if args.action == "write":
        write(args.lock.resolve())
        return 0
    return check(args.lock.resolve())


if __name__ == "__main__":
    sys.exit(main())
