"""Google's BasicTokenizer normalisation, compiled into one FastBertNormalizer model.

google-research/bert's `BasicTokenizer` (tokenization.py) decodes UTF-8 dropping invalid
bytes, removes NUL, U+FFFD and control characters (Cc, Cf), turns whitespace into spaces,
spaces out CJK ideographs, and for uncased models lower-cases, applies NFD and strips
non-spacing marks (Mn). All of that except the CJK spacing and the punctuation split is a
function of one code point at a time, so it compiles into the code point -> string table
that tensorflow-text's `FastBertNormalizer` op applies in a single pass. The stock table
that op ships is built from ICU's NFKC_Casefold instead (so "…" becomes "...", "ß" becomes
"ss", "ς" becomes "σ", and control characters become spaces rather than disappearing);
this module builds the table from Python's own `str.lower` and `unicodedata` instead, the
very functions Google's tokenizer calls, so the two agree code point for code point.

CJK spacing and punctuation splitting are left to `FastWordpieceTokenizer`'s
pre-tokenisation, which uses Google's CJK ranges and Google's punctuation rule (ASCII
symbols plus Unicode P*) through ICU. ICU there is newer than Python's Unicode database;
the few code points ICU calls punctuation but Python leaves unassigned are listed in
`ICU_ONLY_PUNCTUATION` and mapped to a sentinel that behaves like Google's unknown
character (tests/text check the list against both libraries exhaustively).

What a code point table cannot express is handled by the caller (BertPreprocessor):
- Python's `str.lower` gives a capital sigma its final form (ς) at the end of a word;
  the table maps "Σ" to a private-use marker that the caller resolves with the same rule.
- Google maps a word longer than 200 code points to [UNK].
"""

import functools
import unicodedata

import flatbuffers
import numpy as np

# Code points that tensorflow-text's ICU (Unicode 16) treats as punctuation but
# Python 3.11's unicodedata (Unicode 14) leaves unassigned, so Google's tokenizer keeps
# them inside words. Inclusive ranges.
ICU_ONLY_PUNCTUATION = (
    (0x1B4E, 0x1B4F), (0x1B7F, 0x1B7F), (0x10D6E, 0x10D6E), (0x113D4, 0x113D5),
    (0x113D7, 0x113D8), (0x11B00, 0x11B09), (0x11BE1, 0x11BE1), (0x11F43, 0x11F4F),
    (0x16D6D, 0x16D6F), (0x1E5FF, 0x1E5FF),
)

CAPITAL_SIGMA = "\u03a3"

# Private-use code points: Google's tokenizer keeps them as ordinary letters, and a
# vocabulary almost never contains them, so they serve as the sigma marker and as the
# "behaves like an unknown letter" sentinel (see choose_private_chars).
_PRIVATE_USE = range(0xE000, 0xF900)

# Leaf values of the FastBertNormalizer trie (fast_bert_normalizer.h): bit 30 says "maps
# to something else", bits 6..29 the offset of the mapped string in the pool, bits 0..5
# its length in bytes.
_DIFFERENT = 0x40000000
_LENGTH_BITS = 6
_MAX_MAPPED_BYTES = (1 << _LENGTH_BITS) - 1


def is_control(char):
    """Google's _is_control: Cc and Cf, except the three it treats as whitespace."""
    if char in "\t\n\r":
        return False
    return unicodedata.category(char) in ("Cc", "Cf")


def is_whitespace(char):
    """Google's _is_whitespace."""
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def is_punctuation(char):
    """Google's _is_punctuation: ASCII symbols plus Unicode category P*."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_cjk(cp):
    """Google's BasicTokenizer._is_chinese_char."""
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F
    )


def _icu_only_punctuation():
    return {chr(cp) for lo, hi in ICU_ONLY_PUNCTUATION for cp in range(lo, hi + 1)}


def google_normalize_char(char, lowercase):
    """What Google's BasicTokenizer makes of `char` alone, before splitting."""
    cp = ord(char)
    if cp == 0 or cp == 0xFFFD or is_control(char):
        return ""
    if is_whitespace(char):
        return " "
    if not lowercase:
        return char
    text = unicodedata.normalize("NFD", char.lower())
    return "".join(c for c in text if unicodedata.category(c) != "Mn")


def all_code_points():
    """Every Unicode scalar value (surrogates cannot come out of UTF-8)."""
    return (chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF)


@functools.lru_cache(maxsize=1)
def assigned_code_points():
    """(char, category) for every code point but unassigned (Cn) and private-use (Co)
    ones, which no rule here treats specially (Python gives them no properties)."""
    chars = [chr(cp) for cp in range(0x110000)]
    # Surrogates (Cs) cannot come out of UTF-8 either.
    return tuple(
        (char, cat) for char, cat in zip(chars, map(unicodedata.category, chars))
        if cat not in ("Cn", "Co", "Cs")
    )


@functools.lru_cache(maxsize=2)
def google_char_table(lowercase):
    """{char: normalised string} for every code point Google's normalisation changes.

    The splitting-relevant fix-ups are applied here too: every character Python's
    str.split() treats as a separator (Google splits with it twice) becomes a space.
    """
    table = {}
    # No step of Google's normalisation touches unassigned or private-use code points.
    for char, _ in assigned_code_points():
        out = google_normalize_char(char, lowercase)
        if any(c.isspace() for c in out):
            out = "".join(" " if c.isspace() else c for c in out)
        if out != char:
            table[char] = out
    return table


def choose_private_chars(vocabulary, count=2):
    """The first `count` private-use characters that occur in no vocabulary token.

    A word holding such a character can never be split into word pieces, so it turns
    into [UNK] exactly like a word holding any other character missing from the
    vocabulary.
    """
    used = set()
    for token in vocabulary:
        used.update(token)
    chosen = [chr(cp) for cp in _PRIVATE_USE if chr(cp) not in used][:count]
    if len(chosen) < count:
        raise ValueError("the vocabulary uses every private-use character")
    return chosen


def invalid_utf8_segments():
    """Every byte run ICU's U8_FWD_1 steps over as one ill-formed unit.

    FastBertNormalizer walks its input with U8_FWD_1 and looks each step up in its
    trie, so listing these runs (mapped to "") drops ill-formed bytes exactly like
    Google's `bytes.decode("utf-8", "ignore")`: both consume maximal ill-formed
    subparts and never swallow a following well-formed character.
    """
    trail = range(0x80, 0xC0)
    segments = [bytes([b]) for b in range(0x80, 0x100)]
    for lead in range(0xE0, 0xF0):
        lo, hi = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F)}.get(lead, (0x80, 0xBF))
        segments += [bytes([lead, t1]) for t1 in range(lo, hi + 1)]
    for lead in range(0xF0, 0xF5):
        lo, hi = {0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(lead, (0x80, 0xBF))
        for t1 in range(lo, hi + 1):
            segments.append(bytes([lead, t1]))
            segments += [bytes([lead, t1, t2]) for t2 in trail]
    return segments


def build_darts_trie(keys_values):
    """A darts-clone double-array trie, as tensorflow-text's trie wrapper reads it.

    Units are uint32: bits 0..7 the label of the edge into the node, bit 8 "has a value",
    bits 10..30 the XOR offset to the children (child = node ^ offset ^ byte), and a
    node's value sits in a leaf unit at node ^ offset with bit 31 set. Keys are non-empty
    byte strings without NUL. A plain trie (no DAWG sharing) is enough here.
    """
    root = {}
    for key, value in keys_values:
        node = root
        for byte in key:
            node = node.setdefault(byte, {})
        node[None] = value  # the value slot, reached through label 0

    # Free cells form a doubly linked list (from `head`) so the first-fit search below
    # steps over free cells only. Cell 0 is the root.
    capacity = 1 << 12
    units = [0] * capacity
    nxt = list(range(1, capacity + 1))
    prv = list(range(-1, capacity - 1))
    used = bytearray(capacity)
    used_bases = set()
    head = 1  # first free cell; every cell >= capacity is free too
    end = 1  # one past the last used cell

    def ensure(size):
        nonlocal capacity
        while capacity < size:
            units.extend([0] * capacity)
            nxt.extend(range(capacity + 1, 2 * capacity + 1))
            prv.extend(range(capacity - 1, 2 * capacity - 1))
            used.extend(bytearray(capacity))
            capacity *= 2

    def take(cell):
        nonlocal head, end
        ensure(cell + 1)
        used[cell] = 1
        end = max(end, cell + 1)
        if cell == head:
            head = nxt[cell]
        else:
            nxt[prv[cell]] = nxt[cell]
        if nxt[cell] < capacity:
            prv[nxt[cell]] = prv[cell]

    used[0] = 1
    queue = [(0, root)]
    while queue:
        next_queue = []
        for node_id, node in queue:
            labels = sorted(0 if k is None else k for k in node)
            base = None
            # Bounded first fit over the free cells keeps building at about a second.
            # Wide nodes (the ill-formed UTF-8 runs: 64 trail bytes) would rarely fit a
            # gap, so they, and narrow nodes that found none, open a fresh block.
            if len(labels) <= 32:
                cell = head
                for _ in range(256):
                    candidate = cell ^ labels[0]
                    ensure((candidate | 0xFF) + 1)
                    if candidate not in used_bases and not any(
                        used[candidate ^ c] for c in labels
                    ):
                        base = candidate
                        break
                    cell = nxt[cell]
            if base is None:
                base = (end + 0xFF) & ~0xFF
                ensure(base + 256)
            offset = node_id ^ base
            if offset >= 1 << 21:
                raise ValueError("trie too large for darts-clone offsets")
            used_bases.add(base)
            units[node_id] |= offset << 10
            for key, child in node.items():
                if key is None:
                    units[node_id] |= 0x100
                    units[base] = 0x80000000 | child
                    take(base)
                else:
                    units[base ^ key] = key
                    take(base ^ key)
                    next_queue.append((base ^ key, child))
        queue = next_queue
    return units[:end]


def build_normalizer_model(table, extra_keys=(), lowercase=True):
    """The FastBertNormalizer flatbuffer for `table` ({char: str}) plus `extra_keys`
    ({utf-8 bytes: str}, e.g. ill-formed byte runs)."""
    pool = bytearray()
    pool_offsets = {}
    entries = [(char.encode("utf-8"), out) for char, out in table.items()]
    entries += list(extra_keys)
    keys_values = []
    data_for_nul = 0
    for key, out in entries:
        mapped = out.encode("utf-8")
        if len(mapped) > _MAX_MAPPED_BYTES:
            raise ValueError(f"mapping of {key!r} is longer than {_MAX_MAPPED_BYTES} bytes")
        offset = 0
        if mapped:
            if mapped not in pool_offsets:
                pool_offsets[mapped] = len(pool)
                pool += mapped
            offset = pool_offsets[mapped]
        data = _DIFFERENT | (offset << _LENGTH_BITS) | len(mapped)
        if key == b"\x00":
            # The trie cannot hold NUL; the op keeps its value aside.
            data_for_nul = data
        else:
            keys_values.append((key, data))
    trie = build_darts_trie(keys_values)

    # table FastBertNormalizerModel { lower_case_nfd_strip_accents: bool;
    #   trie_array: [uint32]; data_for_codepoint_zero: int32;
    #   normalized_string_pool: [ubyte]; }
    builder = flatbuffers.Builder(4 * len(trie) + len(pool) + 1024)
    trie_vector = builder.CreateNumpyVector(np.array(trie, dtype=np.uint32))
    pool_vector = builder.CreateByteVector(bytes(pool))
    builder.StartObject(4)
    builder.PrependBoolSlot(0, lowercase, False)
    builder.PrependUOffsetTRelativeSlot(1, trie_vector, 0)
    builder.PrependInt32Slot(2, data_for_nul, 0)
    builder.PrependUOffsetTRelativeSlot(3, pool_vector, 0)
    builder.Finish(builder.EndObject())
    return bytes(builder.Output())


@functools.lru_cache(maxsize=8)
def normalizer_model(lowercase, sigma_marker, sentinel):
    """The FastBertNormalizer model reproducing Google's BasicTokenizer normalisation.

    `sigma_marker` (lower-cased only) stands in for "Σ" until the caller decides between
    σ and ς; `sentinel` replaces characters that must stay inside a word but would
    otherwise be split off (ICU_ONLY_PUNCTUATION) and any literal marker in the input.
    Both are private-use characters absent from the vocabulary (choose_private_chars).
    """
    table = dict(google_char_table(lowercase))
    for char in _icu_only_punctuation():
        table[char] = sentinel
    if lowercase:
        table[CAPITAL_SIGMA] = sigma_marker
        table[sigma_marker] = sentinel
    extra = [(segment, "") for segment in invalid_utf8_segments()]
    return build_normalizer_model(table, extra, lowercase)


def _ranges(code_points):
    """Sorted code points -> [(first, last), ...] inclusive runs."""
    runs = []
    for cp in code_points:
        if runs and runs[-1][1] == cp - 1:
            runs[-1][1] = cp
        else:
            runs.append([cp, cp])
    return [tuple(r) for r in runs]


@functools.lru_cache(maxsize=1)
def sigma_context_classes():
    """(cased, case_ignorable) code point runs, as Python's str.lower sees them.

    CPython lower-cases "Σ" to "ς" when a cased letter precedes it and none follows it,
    skipping case-ignorable characters both ways (Unicode's Final_Sigma). The classes
    are read off `str.lower` itself, so they are Python's and not a copy of a table:
    a character after "AΣ" keeps σ if it is cased or case-ignorable (then "B" decides),
    and only a cased one keeps σ without the "B". Unassigned and private-use code
    points are neither.
    """
    cased, ignorable = [], []
    for char, _ in assigned_code_points():
        if ("A\u03a3" + char + "B").lower()[1] == "\u03c2":
            continue
        if ("A\u03a3" + char).lower()[1] == "\u03c3":
            cased.append(ord(char))
        else:
            ignorable.append(ord(char))
    return _ranges(cased), _ranges(ignorable)


def regex_class(runs, extra=""):
    """An RE2 character class matching the code point runs (plus literal `extra`)."""
    parts = [
        f"\\x{{{lo:X}}}" if lo == hi else f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in runs
    ]
    parts += [f"\\x{{{ord(c):X}}}" for c in extra]
    return "[" + "".join(parts) + "]"


def sigma_rules(marker):
    """RE2 (pattern, rewrite) passes that turn `marker` into σ or ς like `str.lower`.

    Applied in order to normalised text in which "Σ" became `marker` (and nothing else
    did). Python's rule, with case-ignorable characters skipped both ways: ς if a cased
    letter precedes and none follows, else σ.
    """
    cased, ignorable = sigma_context_classes()
    cased = regex_class(cased, extra=marker)
    ignorable = regex_class(ignorable)
    followed = (f"{marker}({ignorable}*{cased})", "\u03c3\\1")
    return (
        # Followed by a cased letter: σ. Twice, because a match consumes the letter
        # after the marker, and that letter may be the next marker.
        followed,
        followed,
        # Not followed by one (any more), but preceded by one: ς.
        (f"({cased}{ignorable}*){marker}", "\\1\u03c2"),
        # Neither: σ.
        (marker, "\u03c3"),
    )


@functools.lru_cache(maxsize=1)
def split_pattern():
    """An RE2 class of what Google splits off as single-character words after
    normalisation: its punctuation (ASCII symbols plus P*) and CJK ideographs."""
    # Google's CJK test is by range, assigned or not.
    cjk = (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), \
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)
    code_points = {ord(c) for c, _ in assigned_code_points() if is_punctuation(c)}
    for lo, hi in cjk:
        code_points.update(range(lo, hi + 1))
    assert all(is_cjk(cp) for lo, hi in cjk for cp in (lo, hi))
    return regex_class(_ranges(sorted(code_points)))
