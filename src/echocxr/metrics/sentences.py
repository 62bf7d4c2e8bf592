"""Sentence splitting for RaTEScore, equal to the official splitter (medspacy's PyRuSH) on report text.

Why: the official RaTEScore cuts each report into sentences with medspacy 1.3.1's PyRuSH component
before NER, and which sentences the NER model sees changes the entities it finds (a rule-based
".!?" split scored 20 of 154 real reports differently, up to 0.047 apart). PyRuSH itself cannot be
installed beside this project's numpy, so this module reproduces what it does to report text with
its own rules, and is tested against a golden split that the real PyRuSH made of the IU X-ray and
CXR-Phantom reports (`tests/data/rush_golden.json.gz`, scripts/golden/make_rush_golden.py).

How: RuSH marks where sentences may begin and end with local rules and then pairs the marks; this
module does both. `_BEGIN`/`_END` are our rules for the marks RuSH makes on report text (a capital
after "x. ", a lower-case word after "xx. ", a list number after a full stop, a period before white
space, ...), `_NOT_BEGIN`/`_NOT_END` the marks it cancels (titles such as "Dr.", "x. and"); of
overlapping marks the widest stays. `assemble` pairs them as RuSH does: a begin opens a sentence only
after an end closed the previous one, an end without a begin after it stretches the last sentence, and
text left between sentences joins a neighbour when short or becomes a sentence of its own (medspacy
makes every such gap a sentence). Equal to PyRuSH on every IU X-ray and CXR-Phantom (EN, ZH) report of
the golden file; on harder synthetic text (new lines, "1)" lists) it still differs on a few percent.
"""

from __future__ import annotations

import regex

# Character classes of the rules: lower/upper-case letter, digit, white space, and "wide" (white space or
# any character past "~", so CJK text counts).
_LO, _UP, _DG = r"\p{Ll}", r"\p{Lu}", r"\p{Nd}"
_WIDE = r"(?:\s|[^\x00-\x7e])"
_PRONOUNS = ("He|His|Her|She|We|Our|The|They|Their|I|My|But|Now|Discharge|This|That|this|that|he|she|we|our|"
             "his|her|they|their|my|but")

#: where a sentence may begin: the span of group "b" (a rule's mark covers that much text)
_BEGIN = [regex.compile(rx) for rx in (
    rf"^\s*(?P<b>{_UP}|{_DG})",
    rf"{_LO}\.\s+(?P<b>{_UP})",
    rf"\)\.\s+(?P<b>{_UP})",
    rf"{_UP}{{3}}\.\s+(?P<b>{_UP}){_LO}",
    rf"{_DG}\.\s+(?P<b>{_UP})",
    rf"{_LO}{{2}}\.{_WIDE}+(?P<b>{_LO}+)",
    rf"[?!]\s+(?P<b>{_UP}){_LO}",
    rf"[?!]\s+(?P<b>{_DG})",
    r"\.\s+(?P<b>N)ow ", r"\.\s+(?P<b>D)ischarge ", r"\.\s+(?P<b>The)",
    rf"\.\s+(?P<b>{_DG}\.\s+{_UP})",
    rf"\.\s+(?P<b>{_DG}\.{_UP})",
    rf"\.{_WIDE}+(?P<b>\")",
    rf"\.{_WIDE}+(?P<b>(?:{_PRONOUNS}) )",
    rf"{_DG}+\s+\.\s+(?P<b>{_UP})",
    rf"{_LO}+\s+\.\s+(?P<b>{_UP}{_LO}+)",
    rf"{_LO}\.\"\s+(?P<b>{_UP})",
    rf"{_LO}\.?\s+(?P<b>-)\s+{_UP}",
    r"(?P<b>F)INDINGS:",
    rf"{_LO}{_LO}+\.{_WIDE}+(?P<b>{_DG})\)\s+{_UP}",
)]
#: a hyphen between two capitalised words is no sentence start
_NOT_BEGIN = [regex.compile(rf"{_UP}{_LO}+\s+(?P<b>-)\s+{_UP}{_LO}+")]

#: where a sentence may end: the span of group "e"
_END = [regex.compile(rx) for rx in (
    r"\S(?P<e>\.) +",
    rf"\S(?P<e>\.)\s+{_UP}",
    rf"(?P<e>\S){_WIDE}+$",
    rf"(?P<e>\.\s+{_DG}\.\s+{_UP})",
    rf"{_LO}(?P<e>\.\s+{_DG}\.{_UP})",
    rf"{_LO}+\s+(?P<e>\.)\s+{_UP}{_LO}+",
    rf"(?:{_LO}|{_UP}|{_DG})(?P<e>\?){_WIDE}+",
    rf"{_LO}\.(?P<e>\")\s+{_UP}",
    rf"(?P<e>\.){_WIDE}+(?:{_PRONOUNS}) ",
    rf"(?P<e>{_LO}|{_UP}|{_DG}|\p{{P}}){_WIDE}+(?:FINDINGS|Findings):",
    rf"{_LO}+{_LO}(?P<e>\.){_WIDE}+{_DG}\)\s+{_UP}",
    r"(?P<e>\.\n\n)",
)]
#: ends that are not sentence ends (titles, "x. and"): they cancel the ends they overlap
_NOT_END = [regex.compile(rx) for rx in (
    r"(?P<e>\s(?:Dr|dr|Mr|mr|Mrs|mrs|Ms|ms|Miss|phd)\.)(?:\s|$)",
    rf"(?P<e>(?:^|\s|\.)\S\.{_WIDE}+and)",
    r"(?P<e>\spulm\.)",
)]


def _spans(rules: list[regex.Pattern], text: str, group: str) -> set[tuple[int, int]]:
    return {m.span(group) for rx in rules for m in rx.finditer(text, overlapped=True) if m.end(group) > m.start(group)}


def _resolve(found: set[tuple[int, int]], vetoes: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """Marks after overlaps are settled: a veto cancels what it overlaps; of overlapping marks the
    widest stays."""
    kept: list[tuple[int, int]] = []
    for span in sorted(found, key=lambda x: (x[0] - x[1], x[0])):
        if any(a < span[1] and span[0] < b for a, b in vetoes) or any(a < span[1] and span[0] < b for a, b in kept):
            continue
        kept.append(span)
    return sorted(kept)


def _marks(text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Sentence-begin offsets and sentence-end spans, as RuSH's rules mark report text."""
    begins = _resolve(_spans(_BEGIN, text, "b"), _spans(_NOT_BEGIN, text, "b"))
    ends = _resolve(_spans(_END, text, "e"), _spans(_NOT_END, text, "e"))
    return [b for b, _ in begins], ends


def _trim_gap(text: str, start: int, stop: int) -> list[int] | None:
    """The part of text[start:stop] from its first non-space character to its last letter, digit or
    closing mark, or None when there is none."""
    gap = text[start:stop]
    first = next((i for i, ch in enumerate(gap) if not ch.isspace()), -1)
    last = 0
    for i in range(len(gap) - 1, first, -1):
        if gap[i].isalnum() or gap[i] in '.!?)]"':
            last = i
            break
    return [start + first, start + last + 1] if first != -1 and last > first else None


def _fill_gap(spans: list[list[int]], text: str, start: int, stop: int, min_chars: int) -> None:
    piece = _trim_gap(text, start, stop)
    if piece is None:
        return
    if piece[1] - piece[0] > min_chars:
        spans.append(piece)
    elif spans:
        spans[-1][1] = piece[1]


def assemble(text: str, begins: list[int], ends: list[tuple[int, int]], min_chars: int = 5) -> list[list[int]]:
    """Sentence spans from sentence-begin offsets and sentence-end marks (start, stop), the way RuSH
    pairs them: a begin opens a sentence only after an end closed the previous one, and an end with no
    begin after it stretches the sentence before it; text outside every sentence joins a neighbour
    when it is short, else becomes a sentence of its own."""
    spans: list[list[int]] = []
    st_begin, st_end, started, j = 0, 0, False, 0
    for i, begin in enumerate(begins):
        if not started:
            st_begin = begin
            if st_begin < st_end:
                continue
            started = True
        elif begin < st_end:
            continue
        if spans and st_begin > spans[-1][1]:
            _fill_gap(spans, text, spans[-1][1], st_begin, min_chars)
        elif not spans and st_begin > 0:
            _fill_gap(spans, text, 0, st_begin, min_chars)
        has_next = i < len(begins) - 1
        for k in range(j, len(ends)):
            if has_next and k < len(ends) - 1 and begins[i + 1] < ends[k][0] + 1:
                break
            st_end, j = ends[k][0] + 1, k
            while st_end >= 1 and (text[st_end - 1].isspace() or text[st_end - 1] == "\u00a0"):
                st_end -= 1
            if st_end < st_begin:
                continue
            if started:
                spans.append([st_begin, st_end])
                started = False
                if not has_next or (k < len(ends) - 1 and begins[i + 1] > ends[k + 1][1]):
                    continue
                break
            spans[-1] = [st_begin, st_end]
            started = False
    if spans:
        head = _trim_gap(text, 0, spans[0][0])
        if head is not None:
            if spans[0][0] <= ends[0][0]:
                spans[0][0] = head[0]
            else:
                spans.insert(0, head)
        tail = _trim_gap(text, spans[-1][1], len(text))
        if tail is not None:
            if tail[1] - tail[0] > min_chars:
                spans.append(tail)
            else:
                spans[-1][1] = tail[1]
    else:
        whole = _trim_gap(text, 0, len(text))
        if whole is not None and whole[1] - whole[0] > min_chars:
            spans.append(whole)
    return spans


def pieces(text: str, spans: list[list[int]]) -> list[tuple[int, int]]:
    """Every sentence span and every stretch between them (medspacy makes each gap a sentence too),
    stripped; pieces without words or shorter than 3 characters are dropped, as the official code does."""
    cuts, last = [], 0
    for b, e in spans:
        if b > last:
            cuts.append((last, b))
        cuts.append((b, e))
        last = max(last, e)
    if last < len(text):
        cuts.append((last, len(text)))
    out = []
    for b, e in cuts:
        piece = text[b:e]
        stripped = piece.strip()
        if stripped.split() and len(stripped) >= 3:
            start = b + len(piece) - len(piece.lstrip())
            out.append((start, start + len(stripped)))
    return out


def split_sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the kept sentences of `text`, stripped of white space."""
    begins, ends = _marks(text)
    return pieces(text, assemble(text, begins, ends))


def split_sentences(text: str) -> list[str]:
    """The sentences RaTEScore's NER sees (PyRuSH's split; pieces without words or < 3 characters dropped)."""
    return [text[b:e] for b, e in split_sentence_spans(text)]
