"""Build the compact WordNet lexicon shipped as package data (``dpo_diff/data/wordnet_lexicon.json.gz``).

The runtime :class:`dpo_diff.lexicons.wordnet.WordNetLexicon` reads only that file, so users never need apt,
nltk data downloads or network access. This script is run by maintainers when the file must be regenerated:

    apt-get install -y wordnet-base          # WordNet 3.0 database (Debian/Ubuntu), ~28 MB
    pip install nltk
    python scripts/build_wordnet_lexicon.py [--dict DEBIAN_WORDNET_DIR] [--out OUT.json.gz]

WordNet 3.0 is distributed under the WordNet licence, which allows redistribution of derived data with the
copyright notice (kept in the file's ``licence`` field).

File layout (JSON, gzip):

* ``lemmas``: ``{lemma: {pos: [tag_count, [synonyms...], [antonyms...]]}}`` with ``pos`` in ``n v a r`` (satellite
  adjectives are folded into ``a``). Every single-word lemma of WordNet appears (also those without substitutes),
  because the runtime part-of-speech guess and the lemmatiser need to know which lemmas exist.
* ``exceptions``: ``{pos: {inflected: [lemma, ...]}}`` from WordNet's ``*.exc`` files (irregular inflections,
  used both to lemmatise ``geese`` and to re-inflect ``goose``).

Ranking (why): synonyms come from the word's own synsets weighted by how often the word is used in that sense
(SemCor tag counts, ``cntlist.rev``) and by sense order (WordNet lists senses most frequent first), so the dominant
sense wins; then, for nouns, the hypernym and the most frequent hyponyms of the dominant sense ("dog" -> "canine",
"hound", "puppy"), because noun synsets often contain no other single word. Single words come first, then
multi-word lemmas (with spaces). Antonyms are WordNet's direct antonyms, then indirect ones through the head of a
satellite adjective cluster ("huge" -> head "large" -> "small").
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

# The 45 lexicographer file names (lexnames(5WN)); Debian's package omits the file that nltk's reader requires.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl"
).split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

MAX_SYNONYMS = 10  # the space keeps 5; extra candidates survive the meaning pre-filter and user overrides
MAX_ANTONYMS = 8
MAX_SENSES = 3  # senses beyond the third rarely match what an image prompt means, unless SemCor saw them
MAX_HYPONYMS = 6
LICENCE = (
    "Derived from WordNet 3.0. WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. "
    "THIS SOFTWARE AND DATABASE IS PROVIDED 'AS IS' AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR "
    "WARRANTIES, EXPRESS OR IMPLIED. The name of Princeton University or Princeton may not be used in advertising "
    "or publicity pertaining to distribution of the software and/or database."
)


def open_wordnet(dict_dir: Path, work: Path):
    """nltk's WordNetCorpusReader over a copy of the Debian dict folder, with the three known workarounds."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = work / "wordnet"
    shutil.copytree(dict_dir, root, ignore=shutil.ignore_patterns("pixmaps", "wnres", "bin", "*.man"))
    lines = [f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}" for i, name in enumerate(LEXNAMES)]
    (root / "lexnames").write_text("\n".join(lines) + "\n")
    nltk.data.path.insert(0, str(work))  # nltk refuses corpus roots outside its data path

    class Reader(WordNetCorpusReader):
        def map_wn(self, version="oewn"):  # needs the omw mapping data, which we do not have or need
            return None

    with warnings.catch_warnings():  # "multilingual functions are not available": expected, we never use them
        warnings.simplefilter("ignore", UserWarning)
        return Reader(str(root), None)


def _name(lemma) -> str:
    return lemma.name().replace("_", " ")


def _is_word(text: str) -> bool:
    return text.replace("-", "").replace("'", "").isalpha()


def _commonness(wn, lemma) -> tuple[int, int]:
    """SemCor count, then polysemy (how many senses the name has) as a proxy for everyday frequency."""
    return lemma.count(), len(wn.synsets(lemma.name()))


def rank_synonyms(wn, word: str, pos: str) -> list[str]:
    scores: dict[str, float] = defaultdict(float)
    synsets = wn.synsets(word, pos=pos)
    if pos == "a":
        synsets = synsets + [s for s in wn.synsets(word, pos="s") if s not in synsets]
    for rank, syn in enumerate(synsets):
        own = next((lm for lm in syn.lemmas() if lm.name().lower() == word), None)
        count = own.count() if own is not None else 0
        if rank >= MAX_SENSES and count == 0:
            continue
        # Tag counts dominate; for words SemCor never saw, sense order decides (WordNet lists frequent senses first).
        weight = count + 0.5**rank
        for lm in syn.lemmas():
            scores[_name(lm)] += weight * (1.0 + 0.1 * min(lm.count(), 10))
        if rank > 0:
            continue
        # The dominant sense's neighbours: noun/verb synsets often hold no other single word ("dog"), and the
        # paper's LLM substitutes are mostly such near neighbours ("flies" -> "soars", "dog" -> "hound").
        related = []
        if pos in ("n", "v"):
            related += [(lm, 0.5) for h in syn.hypernyms()[:1] for lm in h.lemmas()[:2]]
            hypos = sorted((lm for h in syn.hyponyms() for lm in h.lemmas()), key=lambda lm: _commonness(wn, lm),
                           reverse=True)
            related += [(lm, 0.3) for lm in hypos[:MAX_HYPONYMS]]
        else:
            similar = sorted((lm for h in syn.similar_tos() for lm in h.lemmas()),
                             key=lambda lm: _commonness(wn, lm), reverse=True)
            related += [(lm, 0.4) for lm in similar[:MAX_HYPONYMS + 2]]
        for lm, factor in related:
            scores[_name(lm)] += factor * weight * (1.0 + 0.1 * min(lm.count(), 10))
    # Capitalised lemmas are proper names or breeds ("Newfoundland"): not substitutes for a common word.
    cands = [c for c in scores if c.lower() != word and c == c.lower() and _is_word(c.replace(" ", ""))]
    cands.sort(key=lambda c: (" " in c, -scores[c], c))
    return cands[:MAX_SYNONYMS]


def rank_antonyms(wn, word: str, pos: str) -> list[str]:
    direct: list[str] = []
    indirect: list[str] = []
    synsets = wn.synsets(word, pos=pos)
    if pos == "a":
        synsets = synsets + [s for s in wn.synsets(word, pos="s") if s not in synsets]
    for syn in synsets:
        for lm in syn.lemmas():
            if lm.name().lower() == word:
                direct += [_name(a) for a in lm.antonyms()]
        if syn.pos() == "s":  # satellite: borrow the antonyms of its cluster head
            for head in syn.similar_tos():
                for lm in head.lemmas():
                    indirect += [_name(a) for a in lm.antonyms()]
    out, seen = [], {word}
    for c in sorted(direct, key=lambda c: " " in c) + sorted(indirect, key=lambda c: " " in c):
        if c.lower() not in seen and c == c.lower() and _is_word(c.replace(" ", "")):
            seen.add(c.lower())
            out.append(c)
    return out[:MAX_ANTONYMS]


def read_exceptions(dict_dir: Path) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for pos, fname in (("n", "noun.exc"), ("v", "verb.exc"), ("a", "adj.exc"), ("r", "adv.exc")):
        table: dict[str, list[str]] = {}
        for line in (dict_dir / fname).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and "_" not in parts[0]:
                table[parts[0]] = [p for p in parts[1:] if "_" not in p]
        out[pos] = table
    return out


def build(dict_dir: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        wn = open_wordnet(dict_dir, Path(tmp))
        lemmas: dict[str, dict[str, list]] = defaultdict(dict)
        for pos in ("n", "v", "a", "r"):
            names = {n for n in wn.all_lemma_names(pos=pos) if "_" not in n and _is_word(n)}
            if pos == "a":
                names |= {n for n in wn.all_lemma_names(pos="s") if "_" not in n and _is_word(n)}
            for word in sorted(names):
                count = sum(lm.count() for s in wn.synsets(word, pos=pos) for lm in s.lemmas()
                            if lm.name().lower() == word)
                lemmas[word][pos] = [count, rank_synonyms(wn, word, pos), rank_antonyms(wn, word, pos)]
    return {
        "format": "dpo-diff/wordnet-lexicon-v1",
        "source": "WordNet 3.0 (Debian wordnet-base)",
        "licence": LICENCE,
        "lemmas": dict(lemmas),
        "exceptions": read_exceptions(dict_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dict", type=Path, default=Path("/usr/share/wordnet"), help="WordNet 3.0 dict folder")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "src/dpo_diff/data/wordnet_lexicon.json.gz")
    args = parser.parse_args()
    if not (args.dict / "data.noun").is_file():
        raise SystemExit(f"no WordNet database in {args.dict}; install it with 'apt-get install wordnet-base'")
    data = build(args.dict)
    raw = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the file byte-identical across rebuilds of the same database
    with open(args.out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    print(f"wrote {args.out}: {len(data['lemmas'])} lemmas, {len(raw) / 1e6:.1f} MB raw, "
          f"{args.out.stat().st_size / 1e6:.1f} MB gzipped")


if __name__ == "__main__":
    main()
