"""Reading the shell files a CI step sources without running them (workers/core/shell.py):
the vCenter accounts file and envVars. A real bash is the oracle: whatever the reader accepts,
bash sourcing the same text sets the same values; whatever it refuses names the line."""

from __future__ import annotations

import functools
import shutil
import string
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.strategies import sample
from workers.core.shell import ShellSyntax, assignments, exported_value, vcenter_accounts

BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")

# any text bash holds in a variable as written: no NUL, and neither \x01 nor \x7f, which bash
# uses as quoting marks inside array words (it reads "\x7f" there as "\x01\x7f"); both are
# control characters, which an accounts file may not hold anyway
VALUE = st.text(st.characters(blacklist_characters="\x00\x01\x7f",
                              blacklist_categories=("Cs",)), max_size=20)


def single_quoted(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def double_quoted(value: str) -> str:
    out = "".join("\\" + c if c in '\\"$`' else c for c in value)
    return f'"{out}"'


def escaped(value: str) -> str:
    """Every character not a letter or digit escaped with a backslash; a newline, which a
    backslash cannot escape, in single quotes."""
    out = []
    for c in value:
        if c == "\n":
            out.append("'\n'")
        elif c in string.ascii_letters + string.digits:
            out.append(c)
        else:
            out.append("\\" + c)
    return "".join(out) or "''"


STYLES = (single_quoted, double_quoted, escaped)


# strategies built once rather than on every draw (see tests/support/strategies.py)
CHUNKS = st.lists(VALUE, min_size=1, max_size=3)
SEPARATORS = st.sampled_from([" ", "\n  ", " \\\n ", "\t"])
LEADS = st.sampled_from(["", "declare -a vcenter_usernames\n", "# accounts\n",
                         "export FOO=bar # a comment\n"])


@st.composite
def words(draw: st.DrawFn) -> tuple[str, str]:
    """(value, one shell word for it): the value in chunks, each quoted its own way."""
    chunks = draw(CHUNKS)
    styles = sample(draw, STYLES, len(chunks), len(chunks))
    return "".join(chunks), "".join(f(c) for f, c in zip(styles, chunks, strict=True))


@functools.cache
def word_lists(min_size: int, max_size: int) -> st.SearchStrategy[list[tuple[str, str]]]:
    return st.lists(words(), min_size=min_size, max_size=max_size)


@st.composite
def accounts_files(draw: st.DrawFn) -> tuple[list[str], list[str], str]:
    users = draw(word_lists(1, 5))
    passwords = draw(word_lists(len(users), len(users)))
    sep = draw(SEPARATORS)
    lead = draw(LEADS)
    text = (f"{lead}vcenter_usernames=({sep.join(w for _, w in users)})\n"
            f"declare -a vcenter_passwords=({sep.join(w for _, w in passwords)}) ;\n")
    return [v for v, _ in users], [v for v, _ in passwords], text


def bash_arrays(tmp: Path, text: str) -> tuple[list[str], list[str]]:
    """Sources `text` in a real bash and reads the two arrays back, NUL-separated."""
    (tmp / "accounts.sh").write_text(text, encoding="utf-8", newline="")
    reader = ('set -euo pipefail; source ./accounts.sh; '
              'printf "%s\\0" "${#vcenter_usernames[@]}" "${vcenter_usernames[@]}" '
              '"${vcenter_passwords[@]}"')
    p = subprocess.run([BASH, "-c", reader], cwd=tmp, capture_output=True, timeout=10,
                       env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    assert p.returncode == 0, p.stderr
    fields = p.stdout.decode("utf-8").split("\0")[:-1]
    n = int(fields[0])
    return fields[1:1 + n], fields[1 + n:]


@needs_bash
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(accounts_files())
def test_an_accounts_file_reads_as_bash_sources_it(tmp_path, case):
    users, passwords, text = case
    values = assignments(text)
    assert values["vcenter_usernames"] == users
    assert values["vcenter_passwords"] == passwords
    assert (values["vcenter_usernames"], values["vcenter_passwords"]) \
        == bash_arrays(tmp_path, text)


@needs_bash
def test_indexed_assignments_and_appends_read_as_bash_sources_them(tmp_path):
    text = ("vcenter_usernames[0]=a; vcenter_usernames[1]='b c'\n"
            "vcenter_passwords=(x)\nvcenter_passwords+=(y)\nvcenter_usernames[1]+=d\n")
    values = assignments(text)
    assert (values["vcenter_usernames"], values["vcenter_passwords"]) \
        == bash_arrays(tmp_path, text) == (["a", "b cd"], ["x", "y"])


def test_an_accounts_file_gives_pairs_and_names_what_is_wrong():
    good = "vcenter_usernames=(u1 u2)\nvcenter_passwords=('p 1' p2)\n"
    assert vcenter_accounts(good) == [("u1", "p 1"), ("u2", "p2")]
    for text, says in [
        ("", "sets no vcenter_usernames array"),
        ("vcenter_usernames=(a)\n", "sets no vcenter_passwords array"),
        ("vcenter_usernames=(a b)\nvcenter_passwords=(x)\n", "they go in pairs"),
        ("vcenter_usernames=()\nvcenter_passwords=()\n", "vcenter_usernames is empty"),
        ("vcenter_usernames=('')\nvcenter_passwords=(x)\n", "vcenter_usernames[0] is empty"),
        ("vcenter_usernames=(a)\nvcenter_passwords=($'\\x01')\n", "shell expansion"),
        ("vcenter_usernames=(a)\nvcenter_passwords=('secret\x01')\n",
         "vcenter_passwords[0] must not contain control characters"),
        ("vcenter_usernames=(a)\nvcenter_passwords=('\u202esecret')\n",
         "vcenter_passwords[0] must not contain bidirectional"),
        ("vcenter_usernames=(" + "u" * 300 + ")\nvcenter_passwords=(x)\n",
         "vcenter_usernames[0] is longer than 253"),
    ]:
        with pytest.raises(ValueError) as err:
            vcenter_accounts(text)
        assert says in str(err.value), (text, str(err.value))
        assert "secret" not in str(err.value)  # a password is never shown


@pytest.mark.parametrize("text, line, says", [
    ("a=1\necho hi\n", 2, "'echo': only assignments are read"),
    ("a=$(id)", 1, "shell expansion"),
    ("a=`id`", 1, "shell expansion"),
    ('a="${HOME}"', 1, "shell expansion"),
    ("a=1 && b=2", 1, "only assignments"),
    ("a=1 | b", 1, "only assignments"),
    ("a=x*", 1, "only assignments"),
    ("a=~/x", 1, "only assignments"),
    ("a=(x\n\ny", 1, "not closed"),
    ("a='x\n\n", 1, "single quote is not closed"),
    ('a="x', 1, "double quote is not closed"),
    ("a=x\\", 1, "backslash ends the file"),
    ("a=(x)(y)", 1, "unexpected '('"),
    ("a=([1]=x)", 1, "[i]=value entries are not read"),
    ("a[1]=(x)", 1, "an array in an element"),
    ("a[99999]=x", 1, "an index above"),
    ('"a"=x', 1, "only assignments"),
    ("a= (x)", 1, "unexpected '('"),
    (")", 1, "unexpected ')'"),
])
def test_what_only_a_shell_could_say_is_refused_with_its_line(text, line, says):
    with pytest.raises(ShellSyntax) as err:
        assignments(text)
    assert says in str(err.value) and err.value.line == line, str(err.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_read_or_refused_as_shell_syntax(text):
    try:
        values = assignments(text)
    except ShellSyntax as exc:
        assert exc.line >= 1
        return
    assert all(isinstance(v, str | list) for v in values.values())


def test_an_exported_value_is_read_from_env_vars():
    env = 'export vsphere_url="vc1"\nexport GOVC_URL="vc1.example.com"\nexport x=\'a b\'\n'
    assert exported_value(env, "GOVC_URL") == "vc1.example.com"
    assert exported_value(env, "x") == "a b"
    assert exported_value(env, "GOVC_NETWORK") == ""
    assert exported_value('export GOVC_URL=""\n', "GOVC_URL") == ""
