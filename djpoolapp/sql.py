"""A sound classifier of SQL statements: could this change the session?

:func:`classify` runs on every statement a pooled connection executes (the
mysqlclient ``query()`` hook; the PostgreSQL drivers' equivalents) so that the
pool knows, without a round trip, whether a returned connection may hold a
transaction or session state an earlier request left.  *Sound* means: it may
flag a harmless statement (a reset or a reconnect too many), never pass one
that changes the session.

Labels (the whole vocabulary; :data:`LABELS`):

``transaction``
    may have opened a transaction: ``BEGIN``, ``START TRANSACTION``, ``XA``,
    ``SET autocommit``, ``COMMIT AND CHAIN``, ``CALL``.
``set``
    a session setting: ``SET``/``RESET`` of a variable, ``SET NAMES``,
    ``set_config(..., false)``, MySQL ``FLUSH``-free ``SET
    STATEMENT``, ``SET GLOBAL`` (flagged too).
``role``
    ``SET ROLE``, ``SET SESSION AUTHORIZATION``.
``isolation``
    ``SET [SESSION] TRANSACTION ...``, ``SET SESSION CHARACTERISTICS``, the
    ``*transaction_isolation`` / ``*transaction_read_only`` variables.
``temp_table``
    ``CREATE/DROP TEMP[ORARY] ...``, ``SELECT ... INTO TEMP``, a ``pg_temp``
    schema, ``DISCARD TEMP``.
``advisory_lock``
    ``pg_advisory_lock*``, ``pg_try_advisory_lock*``, ``pg_advisory_unlock*``
    (not the ``_xact_`` ones), MySQL ``GET_LOCK``, ``RELEASE_LOCK``,
    ``RELEASE_ALL_LOCKS``.
``prepare``
    ``PREPARE``, ``DEALLOCATE``, MySQL ``DROP PREPARE``.
``listen``
    ``LISTEN``, ``UNLISTEN``.
``cursor``
    ``DECLARE ... WITH HOLD``; MySQL ``HANDLER``.
``use``
    MySQL ``USE`` (and mysqlclient's ``select_db()``, noted by the driver).
``lock_tables``
    MySQL ``LOCK TABLES``, ``UNLOCK TABLES``, any ``FLUSH``.
``user_variable``
    MySQL ``SET @x``, ``@x := ...``, ``... INTO @x``.
``multi_statement``
    more than one statement in one call (a ``;`` outside strings, quoted
    identifiers, comments and dollar quotes, followed by more than comments).
``executable_comment``
    MySQL ``/*! ... */`` and MariaDB ``/*M! ... */`` (their content is
    classified too, as if the server ran it).
``random_seed``
    PostgreSQL ``setseed()``: the reset also reseeds ``random()`` from the
    OS (:data:`RESEED_AFTER`; ``DISCARD ALL`` does not).
``replication_slot``
    PostgreSQL ``pg_create_*_replication_slot()`` and
    ``pg_copy_*_replication_slot()``: a temporary slot lives as long as its
    session, whatever ``DISCARD ALL`` does, so the connection is closed at
    checkin (:data:`CLOSE_TO_RESET`).
``replication_origin``
    PostgreSQL ``pg_replication_origin_session_*()``: a session set up for an
    origin stays so after ``DISCARD ALL``; closed at checkin.
``dblink``
    PostgreSQL ``dblink*()``: named and unnamed dblink connections live in
    the session (``DISCARD ALL`` keeps them); closed at checkin.
``unknown``
    anything else it cannot prove harmless: an unknown statement type,
    ``DO``, ``CALL``, ``EXECUTE``, ``DISCARD``, ``LOAD``, ``HANDLER``,
    ``KILL``, unterminated strings or comments.

The empty set means: a single statement that neither opens a transaction
nor changes session state (``SELECT``, ``INSERT``, ``UPDATE``, ``DELETE``,
``REPLACE``, ``MERGE``, ``WITH``, ``VALUES``, ``TABLE``, ``SHOW``, ``EXPLAIN``
of those, ``SAVEPOINT``, ``RELEASE``, ``ROLLBACK [TO]``, ``COMMIT``, DDL on
ordinary tables, PostgreSQL ``SET LOCAL`` and transaction-scoped locks and
cursors).

What it does not see (documented in docs/behaviour_sql.rst): state changed
inside a user-defined function or procedure body called from a ``SELECT``
(only ``CALL`` and the built-ins above are flagged), and per-statement
counters every session keeps (``LAST_INSERT_ID()``, ``lastval()``,
``FOUND_ROWS()``, warnings): no reset is needed for them;
:func:`reads_session_value` and :func:`sets_session_value` find the
statements that read and (on purpose) set them, for
``pool_mode="transaction"``.

String rules: MySQL ``'...'`` and ``"..."`` with backslash escapes and
doubled quotes, `` `...` `` identifiers; PostgreSQL ``'...'``, ``E'...'``,
``U&'...'``, ``"..."`` identifiers, ``$tag$...$tag$`` (a tag or a name may
hold any non-ASCII character), nested ``/* */``.  Line comments end at a
newline, on PostgreSQL at a carriage return too (as each server's lexer).
When a statement contains a backslash it is also read with the other
setting of backslash escapes (MySQL ``NO_BACKSLASH_ESCAPES`` /
``ANSI_QUOTES``, PostgreSQL ``standard_conforming_strings=off``), and the
labels of both readings are returned: the server's reading is one of them.
Bytes are read as Latin-1 (every byte one character), which keeps the ASCII
structure of any ASCII-compatible character set; for multi-byte sets that
reuse 0x5C (GBK, SJIS) the two readings cover both meanings of the byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, TypeVar

__all__ = [
    "CLOSE_TO_RESET",
    "LABELS",
    "PINS_VALUE",
    "READS_DIAGNOSTICS",
    "READS_ID",
    "READS_PREVIOUS",
    "READS_SEQUENCE",
    "RESEED_AFTER",
    "SETS_ID",
    "SETS_SEQUENCE",
    "classify",
    "reads_session_value",
    "session_value_use",
    "sets_session_value",
]

LABELS = frozenset(
    {
        "transaction",
        "set",
        "role",
        "isolation",
        "temp_table",
        "advisory_lock",
        "prepare",
        "listen",
        "cursor",
        "use",
        "lock_tables",
        "user_variable",
        "multi_statement",
        "executable_comment",
        "random_seed",
        "replication_slot",
        "replication_origin",
        "dblink",
        "unknown",
    }
)

#: Labels of changes that only ending the server session undoes (no reset
#: statement does): a checkin after one closes the connection.
CLOSE_TO_RESET = frozenset({"replication_slot", "replication_origin", "dblink"})
#: Labels after which the reset also reseeds the session's random number
#: generator (``setseed()``, seen or possibly hidden in what cannot be read).
RESEED_AFTER = frozenset({"random_seed", "unknown"})

HARMLESS: frozenset[str] = frozenset()
_A = TypeVar("_A")
_TRANSACTION = frozenset({"transaction"})

# -- fast path -----------------------------------------------------------------
# A single plain DML statement whose raw text (strings included: they can only
# cause a false alarm) holds none of the characters or names that could hide a
# second statement, an executable comment or a state-changing function.  Plain
# substring tests: about 1.5 µs for a 300-character Django SELECT.
_FAST_START = r"\s*(?:select|insert|update|delete|with|replace)\b"
_FAST = re.compile(_FAST_START, re.I | re.A)
_FAST_B = re.compile(_FAST_START.encode(), re.I)
#: Characters whose presence anywhere sends a statement to the full reading.
_MYSQL_CHARS = (";", "@", "/*")
_PG_CHARS = (";", "&")  # "&": U&"..." can spell any name
#: Lowercase names whose presence anywhere does the same.
_MYSQL_NAMES = ("_lock",)
_PG_NAMES = (
    "set_", "setseed", "advisory", "dblink", "temp", "replication_origin",
    "replication_slot", "pg_settings",
)  # fmt: skip
_FAST_RULES: dict[tuple[str, type], tuple[Any, tuple[Any, ...], tuple[Any, ...]]] = {
    ("mysql", str): (_FAST, _MYSQL_CHARS, _MYSQL_NAMES),
    ("mysql", bytes): (
        _FAST_B,
        tuple(c.encode() for c in _MYSQL_CHARS),
        tuple(n.encode() for n in _MYSQL_NAMES),
    ),
    ("postgresql", str): (_FAST, _PG_CHARS, _PG_NAMES),
    ("postgresql", bytes): (
        _FAST_B,
        tuple(c.encode() for c in _PG_CHARS),
        tuple(n.encode() for n in _PG_NAMES),
    ),
}


#: classify()'s answers for recent statements: the ORM sends the same SQL
#: text again and again (its parameters travel apart).  Bounded: cleared when
#: full; statements longer than _MEMO_MAX_LENGTH are not kept.
_memo: dict[tuple[str, Any], frozenset[str]] = {}
_MEMO_MAX_ENTRIES = 512
_MEMO_MAX_LENGTH = 4096


def classify(vendor: str, statement: str | bytes) -> frozenset[str]:
    """The labels of *statement* (see the module docstring); empty: harmless.

    *vendor* is Django's ``connection.vendor``: ``"postgresql"`` or
    ``"mysql"`` (MySQL and MariaDB).  *statement* is the SQL text as sent to
    the server (``bytes`` as mysqlclient's ``query()`` receives it, or
    ``str``).  Any other vendor raises ``ValueError``.  Recent answers are
    remembered (a dictionary look-up instead of about 2 µs of reading).
    """
    key = (vendor, statement)
    try:
        return _memo[key]
    except KeyError:
        pass
    except TypeError:  # unhashable (bytearray, memoryview): not remembered
        return _classify(vendor, statement)
    return _remember(_memo, key, _classify(vendor, statement))


def _remember(memo: dict[tuple[str, Any], _A], key: tuple[str, Any], answer: _A) -> _A:
    """Keep *answer* for *key* (``(vendor, statement)``) in *memo*, which is
    cleared when full; a statement longer than _MEMO_MAX_LENGTH is not kept."""
    if len(key[1]) <= _MEMO_MAX_LENGTH:
        if len(memo) >= _MEMO_MAX_ENTRIES:
            memo.clear()
        memo[key] = answer
    return answer


def _classify(vendor: str, statement: str | bytes) -> frozenset[str]:
    rules = _FAST_RULES.get((vendor, type(statement)))
    if rules is not None:
        start, chars, names = rules
        if start.match(statement):
            for char in chars:
                if char in statement:
                    break
            else:
                lowered = statement.lower()
                for name in names:
                    if name in lowered:
                        break
                else:
                    return HARMLESS
    elif vendor not in ("mysql", "postgresql"):
        raise ValueError(f"classify(): unknown vendor {vendor!r}")
    text = (
        bytes(statement).decode("latin-1")
        if not isinstance(statement, str)
        else statement
    )
    return _classify_slow(vendor, text)


# -- values a later statement reads back ---------------------------------------
# Every session keeps values about its own earlier statements that a later
# statement may read back: the last generated id (PostgreSQL lastval() and
# currval(), set by nextval(), which an INSERT calls for a serial or identity
# column; MySQL LAST_INSERT_ID(), @@identity), and what the previous statement
# did (MySQL FOUND_ROWS(), ROW_COUNT(), its warnings and errors).  They need no
# reset (a new session has none; the next request sets its own), but in
# pool_mode="transaction" a statement that reads one must run on the session
# of the statement that set it, with nobody else's statement in between.

#: Bits of :func:`session_value_use`.
#: Sets a value on purpose, for a later statement to read: pin the session.
PINS_VALUE = 1
#: Reads the last generated id (lastval(), currval(), LAST_INSERT_ID(),
#: @@identity, @@last_insert_id).
READS_ID = 2
#: May set the last generated id (an INSERT, REPLACE, MERGE, LOAD DATA
#: statement, or a call of nextval(), setval(), LAST_INSERT_ID(expr)).
SETS_ID = 4
#: Reads what the previous statement did (FOUND_ROWS(), ROW_COUNT()).
READS_PREVIOUS = 8
#: Reads the diagnostics area (SHOW WARNINGS / ERRORS, @@warning_count,
#: @@error_count, GET DIAGNOSTICS), which a checkin may clear.
READS_DIAGNOSTICS = 16
#: MariaDB: reads a sequence's last value in this session (LASTVAL(seq),
#: PREVIOUS VALUE FOR seq), which is not LAST_INSERT_ID()'s.
READS_SEQUENCE = 32
#: MariaDB: may draw from a sequence (NEXTVAL(seq), NEXT VALUE FOR seq,
#: SETVAL(); an INSERT, REPLACE or LOAD DATA, whose column default may).
SETS_SEQUENCE = 64
#: Any of the readers (:func:`reads_session_value`).
READS_VALUE = READS_ID | READS_PREVIOUS | READS_DIAGNOSTICS | READS_SEQUENCE

#: Any of these words sends a statement to the tokenizer (a cheap filter).
_VALUE_WORDS = {
    "postgresql": re.compile(
        r"\b(?:lastval|currval|nextval|setval|insert|merge)\b", re.I
    ),
    "mysql": re.compile(
        r"\b(?:last_insert_id|found_rows|row_count|sql_calc_found_rows|identity"
        r"|warning_count|error_count|warnings|errors|diagnostics|insert|replace"
        r"|load|nextval|setval|lastval|next|previous)\b",
        re.I,
    ),
}
_ID_READERS = {
    "postgresql": frozenset({"lastval", "currval"}),
    # (LAST_INSERT_ID(expr), with an argument, sets it)
    "mysql": frozenset({"last_insert_id"}),
}
_ID_SETTERS = {
    "postgresql": frozenset({"nextval", "setval"}),
    "mysql": frozenset(),
}
#: MariaDB's sequences: their values are apart from LAST_INSERT_ID()'s.
_MARIADB_SEQUENCE_READERS = frozenset({"lastval"})
_MARIADB_SEQUENCE_SETTERS = frozenset({"nextval", "setval"})
_PREVIOUS_READERS = frozenset({"found_rows", "row_count"})
_MYSQL_SESSION_VALUES = {
    "identity": READS_ID,
    "last_insert_id": READS_ID,
    "warning_count": READS_DIAGNOSTICS,
    "error_count": READS_DIAGNOSTICS,
}
#: Words that start a statement which may generate an id (also after "(" or
#: ")": a data-modifying WITH, INSERT ... SELECT in parentheses).
_ID_STATEMENTS = {
    "postgresql": frozenset({"insert", "merge"}),
    "mysql": frozenset({"insert", "replace", "load"}),
}
_value_memo: dict[tuple[str, Any], int] = {}


def session_value_use(vendor: str, statement: str | bytes) -> int:
    """How *statement* uses the values a session keeps from its earlier
    statements: a combination of :data:`PINS_VALUE`, :data:`READS_ID`,
    :data:`SETS_ID`, :data:`READS_PREVIOUS` and :data:`READS_DIAGNOSTICS`; 0
    for none, the usual answer.

    Read from the statement's tokens (strings and comments are not read;
    names spelled with ``U&"..."`` escapes are not recognised; values set or
    read inside functions, views, column defaults and triggers are not
    seen).  :data:`SETS_ID` errs on the side of "no", :data:`PINS_VALUE` and
    the readers on the side of "yes": a missed reader or an id-setter seen
    where there is none could let a request read another's value, the
    other mistakes only cost an error or a pin.  Remembered as
    :func:`classify`'s answers are (one look-up per statement in
    ``pool_mode="transaction"``).  *vendor*: ``"postgresql"`` or ``"mysql"``;
    another raises ``ValueError``."""
    key = (vendor, statement)
    try:
        return _value_memo[key]
    except KeyError:
        pass
    except TypeError:  # unhashable (bytearray, memoryview): not remembered
        return _value_use(vendor, statement)
    return _remember(_value_memo, key, _value_use(vendor, statement))


def _value_use(vendor: str, statement: str | bytes) -> int:
    try:
        words = _VALUE_WORDS[vendor]
    except KeyError:
        raise ValueError(f"unknown vendor {vendor!r}") from None
    text = (
        statement if isinstance(statement, str) else bytes(statement).decode("latin-1")
    )
    if words.search(text) is None:
        return 0
    use = 0
    for backslash in (True, False) if "\\" in text else (True,):
        use |= _value_use_of_tokens(vendor, list(_tokens(vendor, text, backslash)))
    return use


def _value_use_of_tokens(vendor: str, tokens: list[Token]) -> int:
    use = 0
    id_readers, id_setters = _ID_READERS[vendor], _ID_SETTERS[vendor]
    statements = _ID_STATEMENTS[vendor]
    mysql = vendor == "mysql"
    count = len(tokens)
    for index, (kind, value) in enumerate(tokens):
        previous = tokens[index - 1] if index else ("o", ";")
        following = tokens[index + 1] if index + 1 < count else ("", "")
        if kind == "flag":
            continue
        if kind in ("w", "q") and following == ("o", "("):  # a call
            if value in id_readers:
                argument = tokens[index + 2] if index + 2 < count else ("", "")
                if mysql and argument != ("o", ")"):
                    use |= PINS_VALUE | SETS_ID  # LAST_INSERT_ID(expr)
                else:
                    use |= READS_ID
            elif value in id_setters:
                use |= PINS_VALUE | SETS_ID
            elif mysql and value in _MARIADB_SEQUENCE_SETTERS:
                use |= PINS_VALUE | SETS_SEQUENCE
            elif mysql and value in _MARIADB_SEQUENCE_READERS:
                use |= READS_SEQUENCE
            elif mysql and value in _PREVIOUS_READERS:
                use |= READS_PREVIOUS
            continue
        if (
            mysql
            and kind in ("w", "q")
            and (
                previous == ("o", "@@")  # @@identity, @@`identity`
                or (
                    previous == ("o", ".")
                    and index > 2
                    and tokens[index - 3] == ("o", "@@")
                )
            )
        ):  # @@SESSION.warning_count
            use |= _MYSQL_SESSION_VALUES.get(value, 0)
            continue
        if kind != "w":
            continue
        if (
            mysql
            and value == "value"
            and following == ("w", "for")
            and previous in (("w", "next"), ("w", "previous"))
        ):  # MariaDB's NEXT VALUE FOR seq, PREVIOUS VALUE FOR seq
            use |= (
                PINS_VALUE | SETS_SEQUENCE if previous[1] == "next" else READS_SEQUENCE
            )
            continue
        if value in statements and previous[0] == "o" and previous[1] in ";()":
            if value != "load" or following[1] in ("data", "xml"):
                # (on MariaDB a column default may draw from a sequence)
                use |= SETS_ID | SETS_SEQUENCE if mysql else SETS_ID
        elif mysql:
            if value == "sql_calc_found_rows":
                use |= PINS_VALUE
            elif value in ("warnings", "errors") and _statement_start(
                tokens, index
            ) == ("w", "show"):
                use |= READS_DIAGNOSTICS
            elif value == "diagnostics" and _statement_start(tokens, index) == (
                "w",
                "get",
            ):
                use |= READS_DIAGNOSTICS
    return use


def _statement_start(tokens: list[Token], index: int) -> Token:
    """The first token of the statement that holds ``tokens[index]`` (``SHOW
    [COUNT(*)] WARNINGS``, ``GET [CURRENT] DIAGNOSTICS``)."""
    start = index
    while start > 0 and tokens[start - 1] != ("o", ";"):
        start -= 1
    return tokens[start]


def sets_session_value(vendor: str, statement: str | bytes) -> bool:
    """Whether *statement* sets a per-session value on purpose, for a later
    statement to read (``nextval()``, ``setval()``, ``LAST_INSERT_ID(expr)``,
    ``SQL_CALC_FOUND_ROWS``): in ``pool_mode="transaction"`` it pins.
    *vendor*: ``"postgresql"`` or ``"mysql"``; another raises ``ValueError``."""
    return bool(session_value_use(vendor, statement) & PINS_VALUE)


def reads_session_value(vendor: str, statement: str | bytes) -> bool:
    """Whether *statement* reads a value the session kept from an earlier
    statement: the last generated id (``lastval()``, ``currval()``,
    ``LAST_INSERT_ID()``, ``@@identity``, ``@@last_insert_id``) or what the
    previous statement did (``FOUND_ROWS()``, ``ROW_COUNT()``, ``SHOW
    WARNINGS`` / ``ERRORS``, ``@@warning_count``, ``@@error_count``, ``GET
    DIAGNOSTICS``).  Calls and names outside strings and comments only.
    *vendor*: ``"postgresql"`` or ``"mysql"``; another raises ``ValueError``."""
    return bool(session_value_use(vendor, statement) & READS_VALUE)


# -- tokenizer -----------------------------------------------------------------
# Token kinds: "w" word (lowercased), "q" quoted identifier, "s" string,
# "n" number or parameter, "o" operator/punctuation; the lexer also yields
# "flag" tokens carrying a label (executable comment, unterminated text).

_MYSQL_TOKEN = r"""
  (?P<ws>\s+)
| (?P<lc>(?:--(?=[\x00-\x20\x7f]|\Z)|\#)[^\n]*)
| (?P<xc>/\*(?:!|[Mm]!)\d*)
| (?P<bc>/\*)
| (?P<s>'(?:[^'{bs}]|{esc}'')*'|"(?:[^"{bs}]|{esc}"")*")
| (?P<q>`(?:[^`]|``)*`)
| (?P<w>[A-Za-z_$\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*)
| (?P<n>[0-9][0-9A-Za-z_$.]*)
| (?P<o>:=|@@|\*/|.)
"""

_PG_TOKEN = r"""
  (?P<ws>\s+)
| (?P<lc>--[^\n\r]*)
| (?P<bc>/\*)
| (?P<s>[Ee]'(?:[^'\\]|\\.|'')*'|[Uu]&'(?:[^']|'')*'|'(?:[^'{bs}]|{esc}'')*')
| (?P<u>[Uu]&"(?:[^"]|"")*")
| (?P<q>"(?:[^"]|"")*")
| (?P<d>\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$)
| (?P<w>[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*)
| (?P<n>\$\d+|[0-9][0-9A-Za-z_.]*)
| (?P<o>::|:=|.)
"""


def _compile(template: str, backslash: bool) -> re.Pattern[str]:
    source = template.replace("{bs}", "\\\\" if backslash else "").replace(
        "{esc}", "\\\\.|" if backslash else ""
    )
    # ASCII: the servers' whitespace is ASCII whitespace only.
    return re.compile(source, re.X | re.S | re.A)


_LEXERS = {
    ("mysql", True): _compile(_MYSQL_TOKEN, True),
    ("mysql", False): _compile(_MYSQL_TOKEN, False),
    ("postgresql", True): _compile(_PG_TOKEN, True),
    ("postgresql", False): _compile(_PG_TOKEN, False),
}

Token = tuple[str, str]


def _tokens(vendor: str, text: str, backslash: bool) -> Iterator[Token]:
    lexer = _LEXERS[vendor, backslash]
    pos, end = 0, len(text)
    in_exec_comment = False
    while pos < end:
        match = lexer.match(text, pos)
        assert match is not None  # the last alternative matches any char
        kind = match.lastgroup
        value = match.group()
        pos = match.end()
        if kind == "ws" or kind == "lc":
            continue
        if kind == "bc":
            pos = _skip_block_comment(text, pos, nested=vendor == "postgresql")
            if pos < 0:
                yield "flag", "unknown"
                return
            continue
        if kind == "xc":  # MySQL runs what it holds: read on as statement text
            yield "flag", "executable_comment"
            in_exec_comment = True
            continue
        if kind == "d":  # PostgreSQL dollar quote: body up to the same tag
            close = text.find(value, pos)
            if close < 0:
                yield "flag", "unknown"
                return
            pos = close + len(value)
            yield "s", ""
            continue
        if kind == "o":
            if value == "*/" and in_exec_comment:
                in_exec_comment = False
                continue
            if value in "'\"`":  # an opening quote that never closes
                yield "flag", "unknown"
                return
            yield "o", value
            continue
        if kind == "w":
            yield "w", value.lower()
        elif kind == "q":
            yield "q", value[1:-1].lower()
        elif kind == "u":  # U&"..." may spell any name with escapes
            yield "flag", "unknown"
            yield "q", value
        else:
            yield kind, value  # type: ignore[misc]


def _skip_block_comment(text: str, pos: int, nested: bool) -> int:
    """Position after the comment opened just before *pos*; -1: unterminated."""
    if not nested:
        close = text.find("*/", pos)
        return -1 if close < 0 else close + 2
    depth = 1
    while depth:
        close = text.find("*/", pos)
        if close < 0:
            return -1
        opening = text.find("/*", pos, close)
        if opening >= 0:
            depth += 1
            pos = opening + 2
        else:
            depth -= 1
            pos = close + 2
    return pos


# -- classification -----------------------------------------------------------
def _classify_slow(vendor: str, text: str) -> frozenset[str]:
    labels = _classify_text(vendor, text, backslash=True)
    if "\\" in text:  # the server may read backslashes either way
        labels |= _classify_text(vendor, text, backslash=False)
    return frozenset(labels)


def _classify_text(vendor: str, text: str, backslash: bool) -> set[str]:
    labels: set[str] = set()
    statements: list[list[Token]] = [[]]
    for token in _tokens(vendor, text, backslash):
        if token[0] == "flag":
            labels.add(token[1])
        elif token == ("o", ";"):
            if statements[-1]:
                statements.append([])
        else:
            statements[-1].append(token)
    if not statements[-1]:
        statements.pop()
    if len(statements) > 1:
        labels.add("multi_statement")
    statement_labels = _MYSQL_STATEMENT if vendor == "mysql" else _PG_STATEMENT
    for tokens in statements:
        labels |= statement_labels(tokens)
    return labels


def _words(tokens: list[Token]) -> list[str]:
    return [value for kind, value in tokens if kind == "w"]


def _first_keyword(tokens: list[Token]) -> tuple[str | None, int]:
    """The leading keyword, skipping opening parentheses; its index."""
    for index, (kind, value) in enumerate(tokens):
        if kind == "o" and value == "(":
            continue
        return (value if kind == "w" else None), index
    return None, len(tokens)


_PLAIN = frozenset(
    {"select", "insert", "update", "delete", "replace", "with", "values", "table"}
)
_EXPLAIN = frozenset({"explain", "describe", "desc"})
#: Statements EXPLAIN or ANALYZE may run (classified as if run).
_EXPLAINED = _PLAIN | frozenset({"merge", "create", "execute", "declare", "call", "do"})


def _explained(tokens: list[Token], start: int) -> list[Token] | None:
    """The statement an EXPLAIN/ANALYZE runs, or None for ``EXPLAIN table``."""
    index = start + 1
    depth = 0
    while index < len(tokens):
        kind, value = tokens[index]
        if kind == "o" and value == "(":
            depth += 1
        elif kind == "o" and value == ")":
            depth -= 1
        elif depth == 0 and kind == "w" and value in _EXPLAINED:
            return tokens[index:]
        index += 1
    return None


# MySQL -----------------------------------------------------------------------
_MYSQL_LOCK_FUNCTIONS = frozenset({"get_lock", "release_lock", "release_all_locks"})
_MYSQL_HARMLESS = _PLAIN | frozenset(
    {
        "show", "help", "savepoint", "release", "checksum", "check",
        "optimize", "repair", "alter", "rename", "truncate", "grant", "revoke",
        "do", "create", "drop", "commit", "rollback", "get", "analyze",
    }
)  # fmt: skip


def _mysql_expressions(tokens: list[Token]) -> set[str]:
    """Labels from anywhere in a MySQL statement: variables and functions."""
    labels: set[str] = set()
    previous: Token = ("", "")
    for index, token in enumerate(tokens):
        kind, value = token
        if kind == "o":
            if value == ":=":
                labels.add("user_variable")
            elif value == "@" and previous == ("w", "into"):
                labels.add("user_variable")
            elif value == "(" and previous[0] in ("w", "q"):
                if previous[1] in _MYSQL_LOCK_FUNCTIONS:
                    labels.add("advisory_lock")
        elif kind == "w" and value == "temporary" and _temporary(tokens, index):
            labels.add("temp_table")
        previous = token
    return labels


_MYSQL_ISOLATION_VARIABLES = frozenset(
    {"tx_isolation", "transaction_isolation", "tx_read_only", "transaction_read_only"}
)


def _mysql_set(tokens: list[Token]) -> set[str]:
    """``SET ...``: what each assignment changes."""
    words = _words(tokens)
    if words[1:2] == ["transaction"] or words[2:3] == ["transaction"]:
        return {"isolation"}  # SET [SESSION|GLOBAL] TRANSACTION ...
    if words[1:2] == ["role"] or words[1:3] == ["default", "role"]:
        return {"role"}
    labels: set[str] = set()
    for assignment in _split_commas(tokens[1:]):
        target = [
            token
            for token in assignment
            if token not in (("o", "@@"), ("o", "."))
            and token[1] not in ("session", "local")
        ]
        if not target:
            labels.add("unknown")
        elif target[0] == ("o", "@"):
            labels.add("user_variable")
        elif target[0][1] == "autocommit":
            labels.add("transaction")
        elif target[0][1] in _MYSQL_ISOLATION_VARIABLES:
            labels.add("isolation")
        else:
            labels.add("set")  # NAMES, CHARACTER SET, GLOBAL x, any variable
    return labels


def _split_commas(tokens: list[Token]) -> list[list[Token]]:
    """Top-level comma-separated parts (parentheses nest)."""
    parts: list[list[Token]] = [[]]
    depth = 0
    for token in tokens:
        if token[0] == "o":
            if token[1] == "(":
                depth += 1
            elif token[1] == ")":
                depth -= 1
            elif token[1] == "," and depth == 0:
                parts.append([])
                continue
        parts[-1].append(token)
    return parts


def _temporary(tokens: list[Token], index: int) -> bool:
    """Whether the TEMP/TEMPORARY word at *index* makes a temporary object."""
    after = tokens[index + 1][1] if index + 1 < len(tokens) else ""
    before = tokens[index - 1][1] if index else ""
    return after in _TEMP_AFTER or before in _TEMP_BEFORE


_TEMP_AFTER = frozenset({"table", "tables", "view", "sequence", "recursive"})
_TEMP_BEFORE = frozenset({"create", "drop", "replace", "global", "local", "into"})


def _MYSQL_STATEMENT(tokens: list[Token]) -> set[str]:
    keyword, start = _first_keyword(tokens)
    labels = _mysql_expressions(tokens)
    if keyword is None:
        return labels | ({"unknown"} if start < len(tokens) else set())
    words = _words(tokens[start:])
    second = words[1] if len(words) > 1 else ""
    if keyword in _EXPLAIN or keyword == "analyze":
        inner = _explained(tokens, start)
        return labels | (_MYSQL_STATEMENT(inner) if inner is not None else set())
    if keyword in ("commit", "rollback"):
        if "chain" in words and "no" not in words:
            labels.add("transaction")
        if "release" in words and "no" not in words:
            labels.add("unknown")
        return labels
    if keyword == "begin" and second == "not":  # MariaDB BEGIN NOT ATOMIC ... END
        return labels | {"transaction", "unknown"}
    if keyword in ("begin", "start", "xa"):
        return labels | {"transaction"}
    if keyword == "set":
        if second == "statement":  # MariaDB SET STATEMENT ... FOR <statement>
            return labels | {"set"}
        if second == "global":
            return labels | {"set"}
        return labels | _mysql_set(tokens[start:])
    if keyword == "use":
        return labels | {"use"}
    if keyword in ("lock", "unlock", "flush"):
        return labels | {"lock_tables"}
    if keyword in ("prepare", "deallocate") or (
        keyword == "drop" and second == "prepare"
    ):
        return labels | {"prepare"}
    if keyword == "execute":
        return labels | {"prepare", "unknown"}
    if keyword == "call":
        return labels | {"transaction", "unknown"}
    if keyword == "handler":
        return labels | {"cursor", "unknown"}
    if keyword == "get" and ("o", "@") in tokens:
        # GET [CURRENT | STACKED] DIAGNOSTICS @x = MESSAGE_TEXT: assigns
        return labels | {"user_variable"}
    if keyword in _MYSQL_HARMLESS:
        return labels
    return labels | {"unknown"}


# PostgreSQL ------------------------------------------------------------------
_PG_ADVISORY = frozenset(
    {
        "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared", "pg_advisory_unlock",
        "pg_advisory_unlock_shared", "pg_advisory_unlock_all",
    }
)  # fmt: skip
_PG_SETTING_FUNCTIONS = frozenset({"set_limit"})
_PG_SLOT_FUNCTIONS = frozenset(
    {
        "pg_create_physical_replication_slot", "pg_create_logical_replication_slot",
        "pg_copy_physical_replication_slot", "pg_copy_logical_replication_slot",
    }
)  # fmt: skip
_PG_TRUE = frozenset({"true", "'t'", "'true'", "'y'", "'yes'", "'on'", "'1'"})
_PG_HARMLESS = _PLAIN | frozenset(
    {
        "merge", "show", "savepoint", "release", "commit", "end", "rollback",
        "abort", "fetch", "move", "close", "copy", "notify", "alter", "drop",
        "truncate", "grant", "revoke", "comment", "vacuum", "analyze",
        "analyse", "cluster", "reindex", "refresh", "lock", "checkpoint",
        "create", "security", "import",
    }
)  # fmt: skip
_PG_ISOLATION_SETTINGS = frozenset(
    {
        "transaction_isolation", "default_transaction_isolation",
        "default_transaction_read_only", "default_transaction_deferrable",
        "transaction_read_only", "transaction_deferrable",
    }
)  # fmt: skip


def _pg_expressions(tokens: list[Token]) -> set[str]:
    """Labels from anywhere in a PostgreSQL statement: functions, pg_temp."""
    labels: set[str] = set()
    for index, (kind, value) in enumerate(tokens):
        if kind not in ("w", "q"):
            continue
        following = tokens[index + 1] if index + 1 < len(tokens) else ("", "")
        if following == ("o", "("):
            if value in _PG_ADVISORY:
                labels.add("advisory_lock")
            elif value in _PG_SETTING_FUNCTIONS:
                labels.add("set")
            elif value == "setseed":
                labels.add("random_seed")
            elif value in _PG_SLOT_FUNCTIONS:
                labels.add("replication_slot")
            elif value == "set_config" and not _pg_local_set_config(tokens, index):
                labels.add("set")
            elif value.startswith("dblink"):
                labels.add("dblink")
            elif value.startswith("pg_replication_origin_session"):
                labels.add("replication_origin")
        elif value == "pg_settings":
            # UPDATE pg_settings SET setting = ... is a SET (reading it is
            # harmless, but a reset costs less than proving which it is).
            labels.add("set")
        elif following == ("o", ".") and re.fullmatch(r"pg_temp(_\d+)?", value):
            labels.add("temp_table")
        elif kind == "w" and value in ("temp", "temporary"):
            if _temporary(tokens, index):
                labels.add("temp_table")
    return labels


def _pg_local_set_config(tokens: list[Token], index: int) -> bool:
    """``set_config(name, value, true)``: the setting ends with the transaction."""
    depth = 0
    args: list[list[Token]] = []
    current: list[Token] = []
    for kind, value in tokens[index + 1 :]:
        if kind == "o" and value == "(":
            depth += 1
            if depth == 1:
                continue
        elif kind == "o" and value == ")":
            depth -= 1
            if depth == 0:
                args.append(current)
                break
        elif kind == "o" and value == "," and depth == 1:
            args.append(current)
            current = []
            continue
        current.append((kind, value))
    if len(args) != 3 or len(args[2]) != 1:
        return False
    kind, value = args[2][0]
    return (kind == "w" and value == "true") or (
        kind == "s" and value.lower() in _PG_TRUE
    )


def _pg_set(tokens: list[Token]) -> set[str]:
    words = _words(tokens)
    rest = words[1:]
    if rest[:1] == ["local"]:
        return set()  # ends with the transaction (none open: a warning)
    if rest[:1] == ["session"]:
        rest = rest[1:]
        if rest[:1] == ["characteristics"]:
            return {"isolation"}
        if rest[:1] == ["authorization"]:
            return {"role"}
    elif rest[:1] in (["transaction"], ["constraints"]):
        return set()  # the current transaction only
    if rest[:1] == ["role"]:
        return {"role"}
    if rest[:1] and rest[0] in _PG_ISOLATION_SETTINGS:
        return {"isolation"}
    if rest[:1] == ["session_authorization"]:
        return {"role"}
    return {"set"}


def _PG_STATEMENT(tokens: list[Token]) -> set[str]:
    keyword, start = _first_keyword(tokens)
    labels = _pg_expressions(tokens)
    if keyword is None:
        return labels | ({"unknown"} if start < len(tokens) else set())
    words = _words(tokens[start:])
    second = words[1] if len(words) > 1 else ""
    if keyword == "explain":
        inner = _explained(tokens, start)
        return labels | (_PG_STATEMENT(inner) if inner is not None else set())
    if keyword in ("commit", "end", "rollback", "abort"):
        if second == "prepared":
            return labels
        if "chain" in words and "no" not in words:
            labels.add("transaction")
        return labels
    if keyword in ("begin", "start"):
        return labels | {"transaction"}
    if keyword == "set":
        return labels | _pg_set(tokens[start:])
    if keyword == "reset":
        if second in ("role", "session_authorization") or words[1:3] == [
            "session",
            "authorization",
        ]:
            return labels | {"role"}
        return labels | {"set"}
    if keyword in ("listen", "unlisten"):
        return labels | {"listen"}
    if keyword == "prepare":
        if second == "transaction":
            return labels | {"unknown"}
        return labels | {"prepare"}
    if keyword == "deallocate":
        return labels | {"prepare"}
    if keyword == "declare":
        held = any(words[i : i + 2] == ["with", "hold"] for i in range(len(words) - 1))
        return labels | ({"cursor"} if held else set())
    if keyword == "discard":
        return labels | (
            {"temp_table"} if second in ("temp", "temporary") else {"unknown"}
        )
    if keyword == "call":
        return labels | {"transaction", "unknown"}
    if keyword in _PG_HARMLESS:
        return labels
    return labels | {"unknown"}
