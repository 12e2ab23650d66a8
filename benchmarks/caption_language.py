"""Caption language identification: CLD3 (gcld3, from the cld3-py wheel) against
py3langid (what the caption_language stage runs), on the hand-labelled short captions of the tests, for accuracy (all,
4+ words, 1-3 words) and speed (captions per second, one thread).

    python benchmarks/caption_language.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "tests" / "filters" / "data" / "caption_languages.tsv"


def labelled() -> list[tuple[str, str]]:
    rows = []
    for line in DATA.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            lang, caption = line.split("\t", 1)
            rows.append((lang, caption))
    return rows


def identifiers():
    import gcld3  # the module of the cld3-py wheel (a dev dependency, for this comparison)

    from vlcurate.filters.language import LanguageIdentifier

    cld3 = gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)
    langid = LanguageIdentifier()  # what the caption_language stage runs
    return {
        "cld3 (cld3-py 3.1.0)": lambda text: cld3.FindLanguage(text=text).language.split("-")[0],
        "py3langid 0.4.0": lambda text: langid(text)[0],
    }


def main() -> None:
    from vlcurate.filters.language import is_long

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    rows = labelled()
    print(f"{len(rows)} captions, {len({l for l, _ in rows})} languages, repeat {args.repeat}")
    print(f"{'identifier':<24}{'all':>8}{'4+ words':>10}{'1-3 words':>11}{'captions/s':>12}")
    for name, identify in identifiers().items():
        hits = [(identify(c) == lang, is_long(c)) for lang, c in rows]
        acc = lambda sel: sum(h for h, s in sel) / max(len(sel), 1)  # noqa: E731
        start = time.perf_counter()
        for _ in range(args.repeat):
            for _, c in rows:
                identify(c)
        rate = args.repeat * len(rows) / (time.perf_counter() - start)
        print(f"{name:<24}{acc(hits):>8.3f}{acc([h for h in hits if h[1]]):>10.3f}"
              f"{acc([h for h in hits if not h[1]]):>11.3f}{rate:>12.0f}")


if __name__ == "__main__":
    main()
