"""The Penn Treebank tokenisation that the official CIDEr run applies, in plain Python (no Java).

Why: the official ECHO evaluation scores CIDEr with the `cidereval` package, which pipes every caption
through the Stanford PTBTokenizer of CoreNLP 3.4.1 (`-preserveLines -lowerCase`, the jar that
`pycocoevalcap` ships) and then drops a fixed list of punctuation tokens. Splitting on whitespace
instead moves CIDEr by up to 1.3 points on one report, so this module re-creates that tokenizer.

How: a longest-match lexer in the manner of the JFlex scanner the Stanford tool is generated from.
At each position every rule is tried; the longest match wins (a rule's trailing context counts
towards its length, as in JFlex), ties go to the earlier rule. The rules cover what report text
contains (words with inner periods, hyphenated and slashed compounds, numbers, dates, fractions,
abbreviations, contractions, quotes, brackets, dashes, ellipses, symbols, URLs) with the options the
official run uses: parentheses and brackets as -LRB-/-LSB-/-LCB- tokens (lower-cased, so the
punctuation filter, which lists the upper-case forms, keeps them), LaTeX-style quotes, PTB dashes
and ellipses, no British-to-American respelling, no slash escaping; characters the scanner does not
know are deleted. Input is lower-cased first, as the official run does before it calls the scanner.

Equality with the jar is tested on real report texts (IU X-ray, CXR-Phantom EN and ZH) and on a
synthetic set against a golden file the jar made (`tests/data/ptb_golden.json.gz`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

import regex

#: the tokens `cidereval` / `pycocoevalcap` drop after tokenising (their PUNCTUATIONS list)
PUNCTUATION = frozenset({"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                         ".", "?", "!", ",", ":", "-", "--", "...", ";"})

# ------------------------------------------------------------------------------------ building blocks
_LET = r"[\p{L}\p{M}\u00ad]"          # a letter (Java isLetter), a combining mark or a soft hyphen
_DIG = r"\p{Nd}"
_ALNUM = r"[\p{L}\p{M}\p{Nd}]"
_APOS = r"(?:['\u0092\u2019]|&apos;)"
_APOSETC = r"(?:['\u0092\u2019\u0091\u2018\u201b]|&apos;)"
_SPACE = r"[ \t\u00a0\u2000-\u200a\u3000]"
_NL = r"(?:\r\n?|\n|\u2028|\u2029|\u000b|\u000c|\u0085)"
_SPACENL = rf"(?:{_SPACE}|{_NL})"
_SGML_NAME = r"[a-z][a-z0-9_:.\-]*"
_SGML = (rf"<(?:[!?][a-z\-][^>\r\n]*|{_SGML_NAME}(?: +(?:{_SGML_NAME}|{_SGML_NAME} *= *(?:'[^']*'|\"[^\"]*\"|{_SGML_NAME})))* */?"
         rf"|/{_SGML_NAME}) *>")
_SENTEND = rf"{_SPACENL}(?:{_SPACENL}|{_SGML})"   # its [A-Z] branch never sees lower-cased text
_NUM = rf"(?:{_DIG}+|{_DIG}*(?:[.:,\u00ad\u066b\u066c]{_DIG}+)+)"
_WORD = rf"{_LET}(?:{_LET}|{_DIG})*(?:[.!?]{_LET}(?:{_LET}|{_DIG})*)*"
_HYPHEN = r"[-_\u058a\u2010\u2011]"
_THING = (rf"(?:[dol]{_APOSETC}{_ALNUM})?{_ALNUM}+"
          rf"(?:{_HYPHEN}(?:[dol]{_APOSETC}{_ALNUM})?{_ALNUM}+)*")
_ACRO = r"[a-z](?:\.[a-z])+"
_HTHING = rf"[a-z0-9][a-z0-9.,\u00ad]*(?:-(?:[a-z0-9\u00ad]+|{_ACRO}\.))+"
_THING3 = r"[a-z0-9]+(?:-[a-z]+){0,2}(?:\\?/[a-z0-9]+(?:-[a-z]+){0,2}){1,2}"
_REDAUX = rf"{_APOS}(?:[msd]|re|ve|ll)"
_SREDAUX = rf"n{_APOSETC}t"

_ABMONTH = "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
_ABDAYS = "mon|tue|tues|wed|thu|thurs|fri"
_ABSTATE = ("ala|ariz|calif|colo|conn|dak|fla|ga|ind|kans?|ky|md|mich|minn|mo|mont|neb|nev|okla|penn|"
            "tenn|va|vt|wisc?|wyo|ct")   # the capital-only ones (Ark., Ill., Mass., ...) never match here
_ABCOMP = "inc|cos?|corp|pp?tys?|ltd|plc|rt|bancorp|dept|bhd|assn|univ|intl|sys"
_ABNUM = "tel|est|ext|sq|ft"
_ABPTIT = r"jr|sr|bros|(?:ed|ph)\.d|blvd|rd|esq|bldg"
_ABBREV1 = rf"(?:{_ABMONTH}|{_ABDAYS}|{_ABSTATE}|{_ABCOMP}|{_ABNUM}|{_ABPTIT}|etc|al|seq)\."
_ABTITLE = ("mr|mrs|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|mt|"
            "capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det")
_ABBREV4 = rf"(?:[a-z]|{_ABTITLE}|vs|alex|wm|jos|cie|a\.k\.a|cf|treas|{_ACRO}|invt|elec|natl|m[ft]g)"
_ABBREV3 = r"(?:ca|figs?|nos?|pp|op)\."

_APOWORD = (rf"{_APOS}n{_APOS}?|[ldj]{_APOS}|dunkin{_APOS}|somethin{_APOS}|ol{_APOS}|{_APOS}em"
            rf"|n{_APOSETC}{_LET}{{2}}{_LET}*|{_APOS}[2-9]0s|{_APOS}till?"
            rf"|{_LET}{_LET}*[aeiouy]{_APOSETC}[aeiou]{_LET}*|{_APOS}cause|cont'd\.?|'twas|nor'easter"
            r"|c'mon|e'er|s'mores|ev'ry|li'l|nat'l")
_FULLURL = r"https?://[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]"
_LIKELYURL = (r"(?:(?:www\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-z]{2,4})"
              r"|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+(?:com|net|org|edu)))"
              r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?")
_EMAIL = r"[a-z0-9][^ \t\n\f\r\"<>|()\u00a0]*@(?:[^ \t\n\f\r\"<>|().\u00a0]+\.)*[^ \t\n\f\r\"<>|().\u00a0]+"
_SMILEY = r"[<>]?[:;=][\-o*']?[()dp\\{@|\[\]]"
_PHONE = r"(?:\([0-9]{3}\)[ \u00a0]?|[0-9]{3}[\- \u00a0.])[0-9]{3}[\- \u00a0.][0-9]{4}"
_QUOTES = (rf"(?:{_APOS}|''|[`\u2018\u2019\u201a\u201b\u201c\u201d\u0091\u0092\u0093\u0094\u201e\u201f"
           r"\u2039\u203a\u00ab\u00bb]{1,2})")
_DBLQUOT = r"(?:\"|&quot;)"
_MISCSYMBOL = ("[\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00b3\u00b4-\u00ba\u00d7\u00f7\u0387\u05be"
               "\u05c0\u05c3\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b\u061e\u066a"
               "\u066d\u0703-\u070d\u07f6-\u07f8\u0964\u0965\u0e4f\u2020-\u2023\u2032-\u2038\u2044"
               "\u207a-\u207f\u208a-\u208e\u2100-\u214f\u2190-\u21ff\u2200-\u22ff\u2300-\u23ff\u2600-\u26ff"
               "\u3001-\u3006\u3008-\u3020\u3012\u30fb\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]")

# ------------------------------------------------------------------------------------ normalisations
_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}


def _latex_quotes(tok: str, left: bool) -> str:
    """Quote characters as LaTeX-style PTB quotes (` `` ' '')."""
    if left:
        tok = re.sub(r"&apos;|'", "`", tok)
        tok = re.sub(r"\"|&quot;", "``", tok)
    else:
        tok = re.sub(r"&apos;|'", "'", tok)
        tok = re.sub(r"\"|&quot;", "''", tok)
    tok = re.sub("[\u0091\u2018\u201b\u2039]", "`", tok)
    tok = re.sub("[\u0092\u2019\u203a]", "'", tok)
    tok = re.sub("[\u0093\u201c\u00ab]", "``", tok)
    return re.sub("[\u0094\u201d\u00bb]", "''", tok)


def _currency(tok: str) -> str:
    tok = tok.replace("\u00a2", "cents").replace("\u00a3", "#")
    return re.sub("[\u0080\u00a4\u20a0\u20ac]", "$", tok)


_Action = Callable[[str], "tuple[list[str], int]"]


def _emit(tok: str) -> tuple[list[str], int]:
    return [tok], len(tok)


def _as(out: str) -> _Action:
    return lambda tok: ([out], len(tok))


def _pushback(n: int) -> _Action:
    return lambda tok: ([tok[:-n]], len(tok) - n)


def _no_soft_hyphen(tok: str) -> tuple[list[str], int]:
    return [tok.replace("\u00ad", "")], len(tok)


def _keep_and_repeat_period(tok: str) -> tuple[list[str], int]:
    """An abbreviation that ends a sentence: the token keeps its period and the period comes again."""
    return [tok], len(tok) - 1


def _quote(left: bool) -> _Action:
    return lambda tok: ([_latex_quotes(tok, left)], len(tok))


def _skip(tok: str) -> tuple[list[str], int]:
    return [], len(tok)


def _hyphens(tok: str) -> tuple[list[str], int]:
    return (["--"] if 3 <= len(tok) <= 4 else [tok]), len(tok)


def _spaced(tok: str) -> tuple[list[str], int]:
    return [tok.replace(" ", "\u00a0")], len(tok)


def _phone(tok: str) -> tuple[list[str], int]:
    return [tok.replace(" ", "\u00a0").replace("(", "-LRB-").replace(")", "-RRB-")], len(tok)


# (regex, trailing context or None, action); order = priority among equally long matches
_RULES: list[tuple[str, str | None, _Action]] = [
    (r"cannot|dunno", None, _pushback(3)),
    (r"gonna|gotta|lemme|gimme|wanna|'tis", None, _pushback(2)),
    (_SGML, None, _spaced),
    (r"&(?:md|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", None, _as("--")),
    (r"&amp;", None, _as("&")),
    (r"&(?:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);", None, _emit),
    (_WORD, _REDAUX, _no_soft_hyphen),
    (r"(?:[a-z]|\u00ad)*[a-mo-z]\u00ad*", _SREDAUX, _no_soft_hyphen),
    (_WORD, None, _no_soft_hyphen),
    (_APOWORD, None, _emit),
    (rf"y{_APOS}", _LET, _emit),
    (_FULLURL, None, _emit),
    (_LIKELYURL, None, _emit),
    (_EMAIL, None, _emit),
    (_REDAUX, r"[^a-z]", _quote(False)),
    (_SREDAUX, None, _quote(False)),
    (rf"{_DIG}{{1,2}}[\-/]{_DIG}{{1,2}}[\-/]{_DIG}{{2,4}}", None, _emit),
    (rf"[\-+]?{_NUM}", None, _no_soft_hyphen),
    (r"[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)", None, _emit),
    (rf"(?:{_DIG}{{1,4}}[- \u00a0])?{_DIG}{{1,4}}(?:\\?/|\u2044){_DIG}{{1,4}}", None, _spaced),
    (r"[\u00bc\u00bd\u00be\u2153-\u215e]", None, lambda tok: ([_FRACTIONS.get(tok, tok)], 1)),
    (r"-(?:rrb|lrb|rcb|lcb|rsb|lsb)-|c\.d\.s|pro-|anti-|s(?:&|&amp;)p-500|s(?:&|&amp;)ls"
     rf"|cap{_APOS}n|c{_APOS}est", None, lambda tok: ([tok.replace("&amp;", "&")], len(tok))),
    (_THING3, None, _emit),
    (r"[@\uff20][a-z_][a-z_0-9]*", None, _emit),
    (rf"[#\uff03]{_LET}+", None, _emit),
    (r"#", None, _emit),
    (r"\$", None, _emit),
    (r"[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]", None,
     lambda tok: ([_currency(tok)], len(tok))),
    (_ABBREV1, _SENTEND, _keep_and_repeat_period),
    (_ABBREV3, rf"{_SPACE}*{_DIG}", _emit),
    (_ABBREV1, None, _emit),
    (rf"{_ABBREV4}\.", None, _emit),
    (_ABBREV4, _SPACE, _emit),
    (_ACRO, _SPACENL, _emit),
    (rf"{_APOS}[0-9][0-9]", _SPACENL, _emit),
    (rf"{_WORD}\.", r"[,;:]", _no_soft_hyphen),
    (_PHONE, None, _phone),
    (_DBLQUOT, r"[a-z0-9$]", _quote(True)),
    (_DBLQUOT, None, _quote(False)),
    (r"\+", None, _emit),
    (r"[%&\u2030\u2031]", None, _emit),
    (r"[~^]", None, _emit),
    (r"[|\\\x7f]", None, _emit),
    (r"\[", None, _as("-LSB-")),
    (r"\]", None, _as("-RSB-")),
    (r"<|&lt;", None, _as("<")),
    (r">|&gt;", None, _as(">")),
    (_SMILEY, r"[^\p{L}\p{Nd}]|$", lambda tok: ([tok.replace("(", "-LRB-").replace(")", "-RRB-")], len(tok))),
    (r"\{", None, _as("-LCB-")),
    (r"\}", None, _as("-RCB-")),
    (r"\(", None, _as("-LRB-")),
    (r"\)", None, _as("-RRB-")),
    (r"-+", None, _hyphens),
    (r"\.{3,5}|(?:\.[ \u00a0]){2,4}\.|[\u0085\u2026]", None, _as("...")),
    (r"@+|#+|_+", None, _emit),
    (r"\*+|(?:\\\*){1,3}", None, _emit),
    (r"[,;:]", None, _emit),
    (r"[?!]+", None, _emit),
    (r"[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa]", None, _emit),
    (r"=", None, _emit),
    (r"/", None, _emit),
    (rf"{_HTHING}\.", r"[,;:]", _no_soft_hyphen),
    (_HTHING, None, _no_soft_hyphen),
    (rf"{_THING}\.", r"[,;:]", _emit),
    (_THING, None, _emit),
    (r"'", r"[a-z][^ \t\n\r\u00a0]", _quote(True)),
    (_REDAUX, None, _quote(False)),
    (_QUOTES, None, _quote(False)),
    (_MISCSYMBOL, None, _emit),
    (r"\x00|[ \t\u00a0\u2000-\u200a\u3000]+|[\u200b\u200e\u200f\ufeff]", None, _skip),
    (_NL, None, _skip),
    (r"&nbsp;", None, _skip),
]


@lru_cache(maxsize=1)
def _compiled() -> list[tuple[regex.Pattern, regex.Pattern | None, _Action]]:
    """Rules compiled for leftmost-longest (POSIX) matching, the semantics of a JFlex scanner."""
    flags = regex.POSIX | regex.V0
    return [(regex.compile(rx, flags), regex.compile(ctx, flags) if ctx else None, act) for rx, ctx, act in _RULES]


# A run of letters (or of digits) followed by white space or the end is one token whatever the rules
# say, unless it is one of the words a rule splits: the common case, taken without trying every rule.
_PLAIN = regex.compile(r"(?:\p{L}+|\p{Nd}+(?![ \u00a0]\p{Nd}{1,4}(?:\\?/|\u2044)\p{Nd}))(?=[ \t\n]|$)")
_NOT_PLAIN = frozenset({"cannot", "dunno", "gonna", "gotta", "lemme", "gimme", "wanna"})
# a letter run before ", " / "; " / ": ", and such a sign (or a period) before white space, are
# single tokens too
_PLAIN_BEFORE_SIGN = regex.compile(r"\p{L}+(?=[,;:][ \t\n])")
# a word before a sentence-final period, unless the word and its period could be an abbreviation
_PLAIN_BEFORE_PERIOD = regex.compile(r"\p{L}+(?=\.(?:[ \t\n]|$))")
_ABBREVIATION = regex.compile(rf"(?:{_ABBREV1}|{_ABBREV4}\.|{_ABBREV3})$")
_PLAIN_SIGN = regex.compile(r"(?:[,;:]|\.(?![ \u00a0]\.))(?=[ \t\n]|$)")


def _lex(text: str, stop: int) -> list[str]:
    """Tokens starting before `stop`; what follows it is only trailing context for the last ones."""
    rules = _compiled()
    out: list[str] = []
    pos = 0
    while pos < stop:
        plain = _PLAIN.match(text, pos)
        if plain is None or plain.group(0) in _NOT_PLAIN:
            plain = _PLAIN_BEFORE_SIGN.match(text, pos) or _PLAIN_SIGN.match(text, pos)
            if plain is None:
                plain = _PLAIN_BEFORE_PERIOD.match(text, pos)
                if plain is not None and _ABBREVIATION.match(plain.group(0) + "."):
                    plain = None
            if plain is not None and plain.group(0) in _NOT_PLAIN:
                plain = None
        if plain is not None:
            out.append(plain.group(0))
            pos = plain.end()
            continue
        best_len, best = 0, None
        for rx, ctx, act in rules:
            m = rx.match(text, pos)
            if m is None or m.end() == pos:
                continue
            length = m.end() - pos
            if ctx is not None:
                c = ctx.match(text, m.end())
                if c is None:
                    continue
                length += c.end() - m.end()
            if length > best_len:
                best_len, best = length, (m.group(0), act)
        if best is None:  # untokenizable: the official run deletes it
            pos += 1
            continue
        tokens, consumed = best[1](best[0])
        out.extend(t.lower() for t in tokens)
        pos += max(consumed, 1)
    return out


#: characters of the next line a line's last token may look at (an abbreviation before a blank line)
_LOOKAHEAD = 80


def ptb_tokenize_lines(lines: list[str]) -> list[list[str]]:
    """PTB tokens of each line, lower-cased, as `cidereval` gets them. The official run tokenises the
    lines as one text joined by newlines, so a line's last token can depend on how the next one starts
    ("etc." before an empty line also yields a "."); each line is lexed with that much of the next."""
    clean = [str(line).replace("\n", " ").lower() for line in lines]
    out = []
    for i, line in enumerate(clean):
        after, j = "", i + 1
        while j < len(clean) and len(after) < _LOOKAHEAD:
            after += "\n" + clean[j][:_LOOKAHEAD]
            j += 1
        out.append(_lex(line + after, len(line)))
    return out


def ptb_tokenize(text: str) -> list[str]:
    """PTB tokens of one line of text (see `ptb_tokenize_lines`)."""
    return ptb_tokenize_lines([text])[0]


def drop_punctuation(tokens: list[str]) -> list[str]:
    """What CIDEr counts n-grams over: the tokens without the punctuation `cidereval` removes, re-split
    on any white space as its n-gram counter does (a phone number's no-break space splits it there)."""
    return " ".join(t for t in tokens if t not in PUNCTUATION).split()


def cider_tokens(texts: list[str]) -> list[list[str]]:
    """CIDEr tokens of a list of captions tokenised together, the way the official run does it."""
    return [drop_punctuation(toks) for toks in ptb_tokenize_lines(texts)]
