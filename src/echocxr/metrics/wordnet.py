"""Offline WordNet for NLTK's METEOR, built from Debian's `wordnet-base` + `wordnet-sense-index`.

NLTK's WordNet reader wants an nltk_data-style folder: the WordNet 3.0 database files plus a
`lexnames` file that Debian does not ship. We assemble such a folder once in a cache directory
(copies of the database files + the standard 45-line lexnames list) and hand NLTK a
reader for it, so nothing is downloaded. NLTK only reads files under its data roots, so the cache's
nltk_data folder is appended to `nltk.data.path`.

Where the database is looked for, first hit wins:
  1. $ECHOCXR_WORDNET_DIR alone when set (a folder with data.noun, index.noun, ...; its lexnames is
     used if present);
  2. $WNSEARCHDIR, $WNHOME/dict, /usr/share/wordnet (Debian), /usr/local/WordNet-3.0/dict.
The assembled folder lives in $ECHOCXR_CACHE_DIR or ~/.cache/echocxr (nltk_data/corpora/wordnet).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

from echocxr.cache import cache_root
from echocxr.errors import UserError

# The database files NLTK's reader opens (lexnames is generated when missing).
REQUIRED_FILES = (
    "index.noun", "index.verb", "index.adj", "index.adv",
    "data.noun", "data.verb", "data.adj", "data.adv",
    "noun.exc", "verb.exc", "adj.exc", "adv.exc",
    "index.sense", "cntlist.rev",
)
APT_HINT = ("install the Debian packages wordnet-base and wordnet-sense-index "
            "(apt-get install wordnet-base wordnet-sense-index) or set ECHOCXR_WORDNET_DIR")

# WordNet 3.0 lexicographer files: (number, name, syntactic category 1=noun 2=verb 3=adj 4=adv).
_LEX_CATEGORIES = (
    ("adj", ("all", "pert"), 3), ("adv", ("all",), 4),
    ("noun", ("Tops", "act", "animal", "artifact", "attribute", "body", "cognition", "communication",
              "event", "feeling", "food", "group", "location", "motive", "object", "person", "phenomenon",
              "plant", "possession", "process", "quantity", "relation", "shape", "state", "substance",
              "time"), 1),
    ("verb", ("body", "change", "cognition", "communication", "competition", "consumption", "contact",
              "creation", "emotion", "motion", "perception", "possession", "social", "stative",
              "weather"), 2),
    ("adj", ("ppl",), 3),
)


def lexnames_text() -> str:
    """The standard WordNet 3.0 `lexnames` file: 45 lines `NN<TAB>pos.name<TAB>category`."""
    lines = []
    for pos, names, category in _LEX_CATEGORIES:
        for name in names:
            lines.append(f"{len(lines):02d}\t{pos}.{name}\t{category}")
    return "\n".join(lines) + "\n"


def candidate_dirs() -> list[Path]:
    if os.environ.get("ECHOCXR_WORDNET_DIR"):  # an explicit choice: no silent fallback
        return [Path(os.environ["ECHOCXR_WORDNET_DIR"])]
    dirs = []
    if os.environ.get("WNSEARCHDIR"):
        dirs.append(Path(os.environ["WNSEARCHDIR"]))
    if os.environ.get("WNHOME"):
        dirs.append(Path(os.environ["WNHOME"]) / "dict")
    dirs += [Path("/usr/share/wordnet"), Path("/usr/local/WordNet-3.0/dict")]
    return dirs


def find_database(dirs: list[Path] | None = None) -> Path:
    """First folder holding every required WordNet file; UserError naming the apt packages otherwise."""
    dirs = candidate_dirs() if dirs is None else dirs
    for d in dirs:
        if all((d / f).is_file() for f in REQUIRED_FILES):
            return d
    looked = ", ".join(str(d) for d in dirs) or "nowhere"
    raise UserError(f"WordNet 3.0 database not found (looked in {looked}); METEOR needs it: {APT_HINT}")


def prepare_wordnet_dir(source: Path | None = None, cache: Path | None = None) -> Path:
    """The nltk_data-style wordnet folder (`<cache>/nltk_data/corpora/wordnet`), assembled on first use."""
    source = find_database() if source is None else source
    target = (cache_root() if cache is None else cache) / "nltk_data" / "corpora" / "wordnet"
    if _is_complete(target, source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".wordnet."))
    try:
        for name in REQUIRED_FILES:
            # a plain copy (36 MB, once): NLTK's path guard refuses symlinks and hard links
            shutil.copyfile(source / name, staging / name)
        if (source / "lexnames").is_file():
            shutil.copyfile(source / "lexnames", staging / "lexnames")
        else:
            (staging / "lexnames").write_text(lexnames_text(), encoding="utf-8")
        (staging / "SOURCE").write_text(str(source.resolve()) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:  # another process won the race: use its folder
            pass
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if not _is_complete(target, source):
        raise UserError(f"could not assemble an NLTK WordNet folder at {target}")
    return target


def _is_complete(target: Path, source: Path) -> bool:
    try:
        recorded = (target / "SOURCE").read_text(encoding="utf-8").strip()
    except OSError:
        return False
    return (recorded == str(source.resolve()) and (target / "lexnames").is_file()
            and all((target / f).is_file() for f in REQUIRED_FILES))


@functools.lru_cache(maxsize=4)
def _reader_for(path: str):
    import warnings

    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class OfflineWordNet(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # The stock reader maps synset ids from the nltk_data "wordnet" corpus for the multilingual
            # (OMW) functions, reading index.sense twice (seconds). METEOR uses no OMW, and this
            # database is WordNet 3.0 itself, so there is nothing to map.
            return None

    root = str(Path(path).parent.parent)  # .../nltk_data: NLTK only reads below registered data roots
    if root not in nltk.data.path:
        nltk.data.path.append(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": we need none
        return OfflineWordNet(path, None)


def wordnet_reader(source: Path | None = None):
    """An NLTK `WordNetCorpusReader` over the offline database (cached per folder)."""
    return _reader_for(str(prepare_wordnet_dir(source)))
