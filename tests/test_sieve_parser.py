"""Sieve lexer, parser and validator: the RFC 5228 grammar, and the exact
place (line, column) of every error a user can make."""

from __future__ import annotations

import pytest

from mailstack.sieve import Limits, SieveError, compile_script, parse
from mailstack.sieve import parser as ast
from mailstack.sieve.parser import Command, Number, StringList, Tag
from mailstack.sieve.validate import SUPPORTED_EXTENSIONS


def error_of(script: str | bytes, **kw: object) -> tuple[int, int, str]:
    with pytest.raises(SieveError) as e:
        compile_script(script, **kw)  # type: ignore[arg-type]
    return e.value.line, e.value.col, e.value.message


# -- grammar --------------------------------------------------------------------------


def test_tree_of_a_small_script() -> None:
    script = 'require ["fileinto"];\nif header :is "Subject" ["a", "b"] {\n  fileinto "X";\n} else { keep; }\n'
    assert parse(script) == (
        Command("require", (StringList(("fileinto",), 1, 9, True),), (), None, 1, 1),
        Command("if", (), (ast.Test("header", (Tag("is", 2, 11), StringList(("Subject",), 2, 15),
                                          StringList(("a", "b"), 2, 25, True)), (), 2, 4),),
                (Command("fileinto", (StringList(("X",), 3, 12),), (), None, 3, 3),), 2, 1),
        Command("else", (), (), (Command("keep", (), (), None, 4, 10),), 4, 3),
    )


def test_comments_are_skipped_and_lines_counted() -> None:
    script = "# hash comment\r\n/* bracket\r\n comment */ keep; # after\n/* */discard;"
    assert parse(script) == (Command("keep", (), (), None, 3, 13), Command("discard", (), (), None, 4, 6))


def test_quoted_string_escapes() -> None:
    (cmd,) = parse(r'reject "say \"hi\" \\ \a\b";')
    assert cmd.arguments[0].values == ('say "hi" \\ ab',)   # undefined escapes drop the backslash


def test_quoted_string_may_span_lines() -> None:
    (cmd, after) = parse('reject "one\ntwo";\nkeep;')
    assert cmd.arguments[0].values == ("one\ntwo",)
    assert (after.line, after.col) == (3, 1)


def test_multiline_text_with_dot_stuffing_and_comment() -> None:
    script = "reject text: # why\r\nline one\r\n..dotted\r\n.not stuffed\r\n.\r\n;\nkeep;"
    (cmd, keep) = parse(script)
    assert cmd.arguments[0].values == ("line one\r\n.dotted\r\n.not stuffed\r\n",)
    assert (keep.line, keep.col) == (7, 1)


def test_multiline_text_ends_at_a_dot_line_even_at_end_of_file() -> None:
    (cmd,) = parse("reject text:\nbye\n.\n;")
    assert cmd.arguments[0].values == ("bye\n",)
    # a final "." without a line break still ends the string: what is missing is the ';'
    assert error_of("reject text:\nbye\n.") == (3, 2, "missing ';' after 'reject'")


def test_numbers_and_quantifiers() -> None:
    cmds = parse("a 0 7 1K 2k 3M 4G;")
    assert [a.value for a in cmds[0].arguments if isinstance(a, Number)] == [
        0, 7, 1024, 2048, 3 * 1024 * 1024, 4 * 1024 ** 3]


def test_identifiers_and_tags_are_case_insensitive() -> None:
    (cmd,) = parse('IF Header :IS "a" "b" { KEEP; }')
    assert cmd.name == "if" and cmd.tests[0].name == "header"
    assert cmd.tests[0].arguments[0] == Tag("is", 1, 11)


def test_test_lists_and_nesting() -> None:
    (cmd,) = parse("if anyof (not true, allof (false, true)) { }")
    outer = cmd.tests[0]
    assert outer.name == "anyof" and outer.test_list
    assert [t.name for t in outer.tests] == ["not", "allof"]
    assert outer.tests[0].tests[0].name == "true" and not outer.tests[0].test_list
    assert [t.name for t in outer.tests[1].tests] == ["false", "true"]
    assert cmd.block == ()


def test_utf8_bytes_and_columns_in_characters() -> None:
    (cmd,) = parse('fileinto "Élèves";'.encode())
    assert cmd.arguments[0].values == ("Élèves",)
    assert error_of('require "fileinto";\nfileinto "é" :copy;') == (2, 14, "tag ':copy' must come before the other arguments of 'fileinto'")


def test_a_complete_script_compiles() -> None:
    script = compile_script(r'''
require ["fileinto", "reject", "envelope", "imap4flags", "copy", "body", "variables",
         "relational", "regex", "date", "index", "vacation", "mailbox", "subaddress",
         "comparator-i;ascii-numeric"];
if header :comparator "i;octet" :matches "subject" "*" { set :lower :upperfirst "s" "${1}"; }
if address :user :is "to" "jean" { addflag "\\Seen"; }
if envelope :domain :is "from" "example.org" { redirect :copy "a@example.org"; }
if body :content ["text/plain", "text"] :contains "x" { fileinto :create :flags "a" "X"; }
if header :regex "subject" "^\\[[[:alpha:]]+\\]" { discard; }
if date :index 1 :last :zone "+0100" :value "ge" "date" "date" "2026-01-01" { stop; }
if header :count "ge" :comparator "i;ascii-numeric" "received" "3" { keep; }
''')
    assert "regex" in script.requires and len(script.commands) == 7


# -- errors with exact places ------------------------------------------------------------


@pytest.mark.parametrize("script, where, message", [
    ('keep;\nreject "oops;\n', (2, 8), "unterminated string: no closing '\"'"),
    ("keep\ndiscard;", (2, 1), "missing ';' before 'discard'"),
    ("keep", (1, 5), "missing ';' after 'keep'"),
    ('require "fileinto";\nfileinto "a"\n}', (2, 13), "missing ';' after 'fileinto'"),
    ("if true {\n  frobnicate;\n}", (2, 3), "unknown command 'frobnicate'"),
    ("if frob { }", (1, 4), "unknown test 'frob'"),
    ('keep;\nfileinto "Archives";', (2, 1), 'missing require "fileinto" for \'fileinto\''),
    ('require "fileinto";\nfileinto :copy "a";', (2, 10), "missing require \"copy\" for ':copy'"),
    ('require "fileinto";\nfileinto :bogus "a";', (2, 10), "unknown tag ':bogus' for 'fileinto'"),
    ("if header : \"a\" \"b\" {}", (1, 11), "':' must be followed by a tag name"),
    ("if size :over 10X {}", (1, 15), "bad number '10X': digits then an optional K, M or G"),
    ("if size :over 99999999999999999999999 {}", (1, 15), "number too large (at most 9223372036854775807)"),
    ("if true {\nreject text:\nno final dot\n", (2, 8), "multi-line string 'text:' has no final '.' line"),
    ("reject text: x\n.\n;", (1, 14), "'text:' must be followed by the end of the line"),
    ("keep; /* never closed", (1, 7), "unterminated comment: '/*' without '*/'"),
    ("keep; @", (1, 7), "unexpected character '@'"),
    ('if header :is ["a",] "b" {}', (1, 20), "expected a string after ',', found ']'"),
    ("if anyof (true false) {}", (1, 16), "'true' takes no test"),   # 'true false' is a test with a test
    ("if anyof (true, false {}", (1, 23), "expected ',' or ')', found '{'"),
    ('keep;\nrequire "fileinto";', (2, 1), "'require' must come before any other command"),
    ('require "frobnicate";', (1, 9), 'unsupported extension "frobnicate"'),
    ("else { }", (1, 1), "'else' without 'if' before it"),
    ("if true {} keep; elsif true {}", (1, 18), "'elsif' without 'if' before it"),
    ("if true;", (1, 1), "'if' needs a block { ... }"),
    ("keep { }", (1, 1), "'keep' takes no block"),
    ("if keep {}", (1, 4), "'keep' is a command, not a test"),
    ("header;", (1, 1), "'header' is a test, not a command"),
    ("if header \"a\" {}", (1, 4), "'header' needs a string list (keys)"),
    ('if exists "a" "b" {}', (1, 15), "unexpected argument to 'exists'"),
    ('require "fileinto";\nfileinto ["a", "b"];', (2, 10), "'fileinto' (mailbox) expects a string, not a string list"),
    ("if header :comparator \"a\" \"b\" {}", (1, 4), "'header' needs a string list (keys)"),
    ('if header :is :contains "a" "b" {}', (1, 15), "tags ':is' and ':contains' cannot be used together"),
    ('if header :is :is "a" "b" {}', (1, 15), "tag ':is' given twice"),
    ("if header :comparator 5 \"a\" \"b\" {}", (1, 23), "':comparator' expects a string, not a number"),
    ('if header :comparator "i;frob" "a" "b" {}', (1, 23), 'unknown comparator "i;frob"'),
    ('if header :comparator "i;ascii-numeric" "a" "b" {}', (1, 23),
     'missing require "comparator-i;ascii-numeric" for comparator "i;ascii-numeric"'),
    ('require "comparator-i;ascii-numeric";\nif header :contains :comparator "i;ascii-numeric" "a" "b" {}', (2, 11),
     'comparator "i;ascii-numeric" cannot be used with \':contains\''),
    ('require "relational";\nif header :value "big" "a" "b" {}', (2, 18), 'unknown relation "big": gt, ge, lt, le, eq or ne'),
    ('require "regex";\nif header :regex "a" "(unclosed" {}', (2, 22), None),
    ('require "regex";\nif header :regex "a" "((a{100}){100}){100}" {}', (2, 22),
     'bad regular expression "((a{100}){100}){100}": repetition counts too large (their product is over 10000)'),
    ('require "variables";\nset "1abc" "x";', (2, 5), 'invalid variable name "1abc"'),
    ('require "index";\nif header :last "a" "b" {}', (2, 11), "':last' needs ':index'"),
    ('require "index";\nif header :index 0 "a" "b" {}', (2, 18), "':index' counts from 1"),
    ('if address "subject" "x" {}', (1, 12), 'header "subject" does not hold addresses'),
    ('if exists "bad name" {}', (1, 11), 'invalid header name "bad name"'),
    ('require "envelope";\nif envelope "cc" "x" {}', (2, 13), 'unknown envelope part "cc": "from" or "to"'),
    ("if size 100 {}", (1, 9), "unexpected argument to 'size'"),
    ("if size :under 1 :over 2 {}", (1, 18), "tags ':under' and ':over' cannot be used together"),
    ('require "date";\nif currentdate "fortnight" "1" {}', (2, 16), 'unknown date part "fortnight"'),
    ('require "date";\nif currentdate :zone "CET" "year" "2026" {}', (2, 22), 'bad time zone "CET": +hhmm or -hhmm'),
    ('redirect "not an address";', (1, 10), 'invalid address "not an address"'),
    ("if anyof true {}", (1, 10), "'anyof' needs a list of tests in parentheses"),
    ("if not (true) {}", (1, 9), "'not' takes one test, not a list"),
    ("if true (false) {}", (1, 10), "'true' takes no test"),
    ('require "imap4flags";\nsetflag "var" "x";', (2, 9), 'missing require "variables" for a variable name in \'setflag\''),
    ('require "vacation";\nvacation :seconds 60 "x";', (2, 10), 'missing require "vacation-seconds" for \':seconds\''),
    ('require "vacation-seconds";\nvacation :days 1 :seconds 60 "x";', (2, 18),
     "tags ':days' and ':seconds' cannot be used together"),
])
def test_error_places(script: str, where: tuple[int, int], message: str | None) -> None:
    line, col, text = error_of(script)
    assert (line, col) == where
    if message is not None:
        assert text == message
    else:
        assert text.startswith('bad regular expression "(unclosed"')


def test_error_string_names_line_and_column() -> None:
    with pytest.raises(SieveError) as e:
        compile_script("keep;\n  frob;")
    assert str(e.value) == "line 2, column 3: unknown command 'frob'"


def test_nesting_too_deep() -> None:
    deep = "if true { " * 32 + "keep;" + " }" * 32
    assert parse(deep)
    too_deep = "if true { " * 33 + "keep;" + " }" * 33
    assert error_of(too_deep) == (1, 324, "nesting too deep (at most 32 levels)")
    nots = "if " + "not " * 40 + "true {}"
    assert error_of(nots)[2] == "nesting too deep (at most 32 levels)"


def test_script_size_limit() -> None:
    assert error_of("keep;" + " " * 70000) == (1, 1, "script too large: 70005 bytes, at most 65536")
    assert compile_script("keep;" + " " * 100, limits=Limits(max_script_size=200))


def test_command_count_and_list_length_limits() -> None:
    assert error_of("keep;" * 11, limits=Limits(max_commands=10)) == (1, 51, "too many commands and tests (at most 10)")
    assert error_of('if header :is "a" ["1","2","3","4"] {}', limits=Limits(max_list_length=3)) == (
        1, 32, "string list too long (at most 3 strings)")


def test_invalid_utf8_is_placed() -> None:
    assert error_of(b'keep;\nreject "caf\xe9";') == (2, 12, "invalid UTF-8 in script")


def test_extensions_can_be_switched_off() -> None:
    assert error_of('require "vacation";', extensions=SUPPORTED_EXTENSIONS - {"vacation"}) == (
        1, 9, 'unsupported extension "vacation"')


def test_variables_defer_checks_to_run_time() -> None:
    compile_script('require ["variables", "regex"];\nif header :regex "a" "${pattern}(" {}')
    compile_script('require ["variables"];\nredirect "${someone}";')


def test_mutated_scripts_fail_only_with_sieve_error() -> None:
    """Random edits of a real script: either it compiles or SieveError says where."""
    import random
    base = ('require ["fileinto", "variables", "relational", "date"];\n'
            'if allof (header :contains "subject" "Circulaire", address :domain "from" "ac-normandie.fr") {\n'
            '  fileinto "Institution"; /* c */ set "a" "${1}";\n} elsif currentdate :value "ge" "date" "2026-07-04" '
            '{ reject text:\nabsent\n..\n.\n; } # end\n')
    pieces = list('{}[]();,:"\\#/*\n .K0123456789abc') + ["if ", ":is ", "text:\n", "\n.\n", "${1}", "anyof("]
    rng = random.Random(5228)
    for _ in range(3000):
        chars = list(base)
        for _ in range(rng.randint(1, 5)):
            pos = rng.randrange(len(chars))
            op = rng.random()
            if op < 0.4:
                chars.insert(pos, rng.choice(pieces))
            elif op < 0.8:
                del chars[pos]
            else:
                chars[pos] = rng.choice(pieces)
        try:
            compile_script("".join(chars))
        except SieveError as e:
            assert e.line >= 1 and e.col >= 1


# -- include (RFC 6609) ------------------------------------------------------------------


def test_include_return_and_global_compile() -> None:
    script = compile_script('require ["include", "variables"];\n'
                            'global ["Company", "x"];\n'
                            'include :global :once "spam";\n'
                            'include :optional "Listes de diffusion";\n'
                            'if true { return; }\n'
                            'include :personal :once :optional "x";\n')
    inc = script.commands[1]
    assert (inc.name, inc.args, dict(inc.tags)) == ("include", ("spam",), {"location": ("global", True), "once": True})
    assert dict(script.commands[2].tags) == {"optional": True}
    assert script.commands[0].args == (("Company", "x"),)
    assert "include" in SUPPORTED_EXTENSIONS


@pytest.mark.parametrize("script, where, message", [
    ('include "x";', (1, 1), 'missing require "include" for \'include\''),
    ('return;', (1, 1), 'missing require "include" for \'return\''),
    ('require "variables";\nglobal "x";', (2, 1), 'missing require "include" for \'global\''),
    ('require "include";\nglobal "x";', (2, 1), 'missing require "variables" for \'global\''),
    ('require "include";\ninclude;', (2, 1), "'include' needs a string (script name)"),
    ('require "include";\ninclude ["a", "b"];', (2, 9), "'include' (script name) expects a string, not a string list"),
    ('require "include";\ninclude :global :personal "a";', (2, 17), "tags ':global' and ':personal' cannot be used together"),
    ('require "include";\ninclude :once :once "a";', (2, 15), "tag ':once' given twice"),
    ('require "include";\ninclude :sometimes "a";', (2, 9), "unknown tag ':sometimes' for 'include'"),
    ('require "include";\ninclude "../etc/passwd";', (2, 9),
     "bad script name \"../etc/passwd\": a script name cannot start with '.' or hold '/' or '\\'"),
    ('require "include";\ninclude "";', (2, 9), 'bad script name "": a script name cannot be empty'),
    ('require "include";\ninclude "' + "n" * 129 + '";', (2, 9),
     'bad script name "' + "n" * 129 + '": a script name has at most 128 characters'),
    ('require ["include", "variables"];\ninclude "${name}";', (2, 9), "the script name of 'include' cannot hold variables"),
    ('require "include";\nreturn "x";', (2, 8), "unexpected argument to 'return'"),
    ('require ["include", "variables"];\nglobal "1";', (2, 8), 'invalid variable name "1"'),
    ('require ["include", "variables"];\nglobal ["ok", "not.ok"];', (2, 8), 'invalid variable name "not.ok"'),
    ('require ["include", "variables"];\nglobal;', (2, 1), "'global' needs a string list (variable names)"),
])
def test_include_errors(script: str, where: tuple[int, int], message: str) -> None:
    assert error_of(script) == (*where, message)


def test_include_name_is_literal_without_variables() -> None:
    """Without "variables", "${x}" is just characters of a (valid) script name."""
    assert compile_script('require "include";\ninclude "${x}";').commands[0].args == ("${x}",)
