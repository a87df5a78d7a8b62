"""Reading the shell files a CI job step sources, without running them: the vCenter accounts
file (`vcenter_usernames=(...)`, `vcenter_passwords=(...)`, the format of the files a pool's
`ci-auth-path` annotation names) and the `export NAME="value"` lines of a lease's env-vars.

Only literal assignments are understood: `NAME=word`, `NAME=(word ...)`, `NAME[i]=word`,
optionally after `export`, `declare`, `typeset` or `readonly` and their flags; words quoted
with '', "" or backslashes. Anything the shell would have to run or expand (`$`, backquotes,
other commands) is refused with the line it is on: such a file means something only a shell
can say, and guessing would hand a job the wrong account. Pure Python, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .text import text_problem

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[([0-9]+)\])?(\+?)=")
_BUILTINS = frozenset({"export", "declare", "typeset", "readonly", "local"})
_WORD_END = frozenset(" \t\n;()")
MAX_INDEX = 4096  # an array index beyond this is not an accounts file


class ShellSyntax(ValueError):
    """What in the text is not a literal assignment, and on which line."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


@dataclass(frozen=True)
class _Word:
    text: str
    line: int
    start: int  # offsets in the text: an array's "(" must touch its "NAME="
    end: int
    plain: int  # how many of its first characters were neither quoted nor escaped

    def op(self, c: str) -> bool:
        return self.plain == len(self.text) == 1 and self.text == c


class _Lexer:
    """Shell words, `(`, `)` and `;` (a newline too), comments dropped."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.line = 1

    def _peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def _take(self) -> str:
        c = self.text[self.i]
        self.i += 1
        if c == "\n":
            self.line += 1
        return c

    def tokens(self) -> list[_Word]:
        out: list[_Word] = []
        while self.i < len(self.text):
            c = self._peek()
            start, line = self.i, self.line
            if c in " \t\r":
                self._take()
            elif c == "\\" and self.text[self.i + 1:self.i + 2] == "\n":  # a continued line
                self._take()
                self._take()
            elif c == "#":
                while self._peek() not in ("", "\n"):
                    self._take()
            elif c in "\n;()":
                self._take()
                out.append(_Word(";" if c == "\n" else c, line, start, self.i, 1))
            else:
                out.append(self._word())
        return out

    def _word(self) -> _Word:
        line, start = self.line, self.i
        parts: list[str] = []
        plain = -1  # set at the first quote or escape
        while True:
            c = self._peek()
            if c == "" or c in _WORD_END or c == "\r":
                break
            if c in "$`":
                raise ShellSyntax(self.line, f"{c!r}: shell expansion is not read (give the "
                                  "value literally, in single quotes)")
            if c in "|&<>{}*?!~" and plain < 0:
                raise ShellSyntax(self.line, f"{c!r}: only assignments are read")
            self._take()
            if c in "'\"\\" and plain < 0:
                plain = len("".join(parts))
            if c == "'":
                while self._peek() != "'":
                    if self._peek() == "":
                        raise ShellSyntax(line, "a single quote is not closed")
                    parts.append(self._take())
                self._take()
            elif c == '"':
                while self._peek() != '"':
                    d = self._peek()
                    if d == "":
                        raise ShellSyntax(line, "a double quote is not closed")
                    if d in "$`":
                        raise ShellSyntax(self.line, f"{d!r} in double quotes: shell expansion "
                                          "is not read (give the value in single quotes)")
                    self._take()
                    if d == "\\" and self._peek() in ('"', "\\", "$", "`", "\n"):
                        e = self._take()
                        if e != "\n":
                            parts.append(e)
                    else:
                        parts.append(d)
                self._take()
            elif c == "\\":
                if self._peek() == "":
                    raise ShellSyntax(self.line, "a backslash ends the file")
                e = self._take()
                if e != "\n":  # backslash-newline continues the line
                    parts.append(e)
            else:
                parts.append(c)
        text = "".join(parts)
        return _Word(text, line, start, self.i, len(text) if plain < 0 else plain)


def assignments(text: str) -> dict[str, str | list[str]]:
    """The literal variables `text` sets, in the order it first sets them: a scalar as a
    string, an array as a list (indexed assignments fill it; an index never set is refused).
    A name set again keeps its last value, as the shell would."""
    words = _Lexer(text).tokens()
    values: dict[str, str | dict[int, str]] = {}
    at = 0
    first = True  # at the start of a statement
    declaring = False  # after export/declare/...: a bare name only declares it
    while at < len(words):
        w = words[at]
        at += 1
        if w.op(";"):
            first, declaring = True, False
            continue
        if first and w.plain == len(w.text) and w.text in _BUILTINS:
            first, declaring = False, True
            while at < len(words) and words[at].text.startswith("-") and words[at].plain:
                at += 1
            continue
        first = False
        if w.op("(") or w.op(")"):
            raise ShellSyntax(w.line, f"unexpected {w.text!r}")
        m = _ASSIGN.match(w.text)
        if m is None or m.end() > w.plain:
            if declaring and w.plain == len(w.text) and NAME.fullmatch(w.text):
                continue
            raise ShellSyntax(w.line, f"{_cut(w.text)!r}: only assignments are read")
        name, index, append = m.group(1), m.group(2), m.group(3) == "+"
        rest = w.text[m.end():]
        old = values.get(name)
        if not rest and at < len(words) and words[at].op("(") and words[at].start == w.end:
            if index is not None:
                raise ShellSyntax(w.line, f"{name}[{index}]=( ... ): an array in an element")
            items, at = _array(words, at + 1, name, w.line)
            base = dict(old) if append and isinstance(old, dict) else {}
            offset = max(base) + 1 if base else 0
            values[name] = {**base, **{offset + i: v for i, v in enumerate(items)}}
        elif index is not None:
            i = int(index)
            if i > MAX_INDEX:
                raise ShellSyntax(w.line, f"{name}[{i}]: an index above {MAX_INDEX}")
            arr = dict(old) if isinstance(old, dict) else ({0: old} if isinstance(old, str)
                                                           else {})
            arr[i] = arr.get(i, "") + rest if append else rest
            values[name] = arr
        elif isinstance(old, dict):  # NAME=value on an array sets its element 0
            values[name] = {**old, 0: old.get(0, "") + rest if append else rest}
        else:
            values[name] = (old or "") + rest if append else rest
    out: dict[str, str | list[str]] = {}
    for name, value in values.items():
        if isinstance(value, dict):
            missing = [i for i in range(max(value) + 1 if value else 0) if i not in value]
            if missing:
                raise ShellSyntax(1, f"{name}[{missing[0]}] is never set")
            out[name] = [value[i] for i in sorted(value)]
        else:
            out[name] = value
    return out


def _array(words: list[_Word], at: int, name: str, line: int) -> tuple[list[str], int]:
    """The items of `NAME=( ... )` from words[at] on, and the index after its ")"."""
    items: list[str] = []
    while True:
        if at >= len(words):
            raise ShellSyntax(line, f"{name}=( ... ): the array is not closed")
        item = words[at]
        at += 1
        if item.op(")"):
            return items, at
        if item.op(";"):  # an array spans lines
            continue
        if item.op("("):
            raise ShellSyntax(item.line, f"{name}=( ... ): unexpected '('")
        if item.text.startswith("[") and item.plain:
            raise ShellSyntax(item.line, f"{name}=( ... ): [i]=value entries are not read; "
                              "list the values in order")
        items.append(item.text)


def _cut(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def exported_value(text: str, name: str) -> str:
    """The value `text` gives the scalar `name` ("" when it sets none)."""
    value = assignments(text).get(name, "")
    return value if isinstance(value, str) else (value[0] if value else "")


USERNAMES, PASSWORDS = "vcenter_usernames", "vcenter_passwords"


def vcenter_accounts(text: str) -> list[tuple[str, str]]:
    """The (user, password) accounts of an accounts file: the arrays `vcenter_usernames` and
    `vcenter_passwords`, pairwise. ValueError says what is wrong (never a password)."""
    values = assignments(text)
    found: dict[str, list[str]] = {}
    for name in (USERNAMES, PASSWORDS):
        value = values.get(name)
        if value is None:
            raise ValueError(f"sets no {name} array")
        found[name] = [value] if isinstance(value, str) else value
        if not found[name]:
            raise ValueError(f"{name} is empty")
    users, passwords = found[USERNAMES], found[PASSWORDS]
    if len(users) != len(passwords):
        raise ValueError(f"{USERNAMES} has {len(users)} entries, {PASSWORDS} "
                         f"{len(passwords)}: they go in pairs")
    for i, (user, password) in enumerate(zip(users, passwords, strict=True)):
        if not user:
            raise ValueError(f"{USERNAMES}[{i}] is empty")
        if not password:
            raise ValueError(f"{PASSWORDS}[{i}] is empty")
        problem = text_problem(user, 253)
        if problem:
            raise ValueError(f"{USERNAMES}[{i}] {problem}")
        problem = text_problem(password, 1024)
        if problem:  # the problem names the character class, never the password
            raise ValueError(f"{PASSWORDS}[{i}] {problem.split(' (found')[0]}")
    return list(zip(users, passwords, strict=True))
