"""secureserve.doctor.dockerfile: the final image, read as BuildKit builds it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from secureserve.doctor._read import MAX_TEXT_BYTES
from secureserve.doctor.dockerfile import parse_dockerfile, read_dockerfile
from secureserve.errors import ConfigError

BASE = "FROM python:3.11-slim\n"
#: A final stage that runs as 10001 unless a later line changes it.
SAFE = BASE + "USER 10001\n"


def user_of(dockerfile: str) -> str | None:
    return parse_dockerfile(dockerfile).user


# --- lines -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "separator", ["\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
)
def test_lines_end_at_newline_only(separator):
    r"""Only \n ends a line: `RUN true #<separator>USER 0` is one RUN line, not a USER."""
    assert user_of(SAFE + f"RUN true #{separator}USER 0\n") == "10001"


def test_lines_lose_their_trailing_carriage_returns():
    r"""CRLF files read like LF files; every \r at the end of a line is dropped."""
    assert user_of("FROM x\r\nUSER 0\r\r\n") == "0"


def test_byte_order_mark_is_ignored():
    """A UTF-8 BOM before the first FROM does not hide it."""
    assert user_of("\ufeffFROM x\nUSER 0\n") == "0"


@pytest.mark.parametrize(
    ("dockerfile", "user"),
    [
        ("# escape=`\n" + SAFE + "RUN echo \\\nUSER 0\n", "0"),
        ("# escape=`\n" + SAFE + "RUN echo `\nUSER 0\n", "10001"),
        ("#ESCAPE = ` \n" + SAFE + "RUN echo \\\nUSER 0\n", "0"),
        ("# syntax=docker/dockerfile:1\n# escape=`\n" + SAFE + "RUN echo \\\nUSER 0\n", "0"),
        ("# a comment\n# escape=`\n" + SAFE + "RUN echo \\\nUSER 0\n", "10001"),
        ("\n# escape=`\n" + SAFE + "RUN echo \\\nUSER 0\n", "10001"),
        (SAFE + "# escape=`\nRUN echo \\\nUSER 0\n", "10001"),
        ("# escape=`\n" + BASE + "ENV A=0\nUSER `$A\n", "$A"),
    ],
    ids=[
        "backslash-no-longer-continues",
        "backtick-continues",
        "any-case-and-spacing",
        "after-syntax",
        "not-after-a-comment",
        "not-after-a-blank-line",
        "not-after-an-instruction",
        "escapes-dollar",
    ],
)
def test_escape_directive_sets_the_escape_character(dockerfile, user):
    """`# escape` on the leading lines sets continuation and escaping; later it is a comment."""
    assert user_of(dockerfile) == user


@pytest.mark.parametrize(
    ("ending", "user"),
    [
        ("\\ \t", "10001"),
        ("\\\xa0", "0"),
        ("\\\u3000", "0"),
        ("foo\\\\", "0"),
        ("\\\\\\", "0"),
    ],
    ids=["spaces-and-tabs", "no-break-space", "ideographic-space", "escaped-escape", "three"],
)
def test_continuation_needs_the_escape_before_spaces_and_tabs_only(ending, user):
    """Only spaces and tabs may follow the continuing escape, which must not be escaped."""
    assert user_of(SAFE + f"RUN echo {ending}\nUSER 0\n") == user


def test_continued_pieces_are_joined_as_written():
    r"""`USER 100\` then `01` is `USER 10001`: BuildKit adds no space between pieces."""
    assert user_of(BASE + "USER 100\\\n01\n") == "10001"


def test_blank_and_comment_lines_inside_a_continuation_are_skipped():
    """They neither end the continuation nor become instructions: USER 0 is RUN text."""
    assert user_of(SAFE + "RUN echo \\\n\n  # USER 0\nUSER 0\n") == "10001"


# --- heredocs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instruction", "user"),
    [
        ("RUN <<EOF\nUSER 0\nEOF\n", "10001"),
        ('RUN <<"EOF"\nUSER 0\nEOF\n', "10001"),
        ("RUN <<'EOF'\nUSER 0\nEOF\n", "10001"),
        ("RUN 3<<-EOF cat\n\tUSER 0\n\t\tEOF\n", "10001"),
        ("COPY <<EOF /etc/motd\nUSER 0\nEOF\n", "10001"),
        ("ONBUILD RUN <<EOF\nUSER 0\nEOF\n", "10001"),
        ("RUN <<A <<B sh\nA\nUSER 0\nB\n", "10001"),
        ("RUN <<EOF\n  EOF\nUSER 0\nEOF\n", "10001"),
        ("RUN <<EOF\nEOF \nUSER 0\nEOF\n", "10001"),
        ("RUN <<EOF\n\tEOF\nUSER 0\nEOF\n", "10001"),
        ("RUN <<-EOF\n\tEOF\nUSER 0\n", "0"),
        ('RUN echo "see <<EOF"\nUSER 0\n', "0"),
        ("RUN echo '<<EOF'\nUSER 0\n", "0"),
        ("RUN cat<<EOF\nUSER 0\n", "0"),
        ('RUN ["sh", "-c", "cat <<EOF"]\nUSER 0\n', "0"),
        ('RUN --mount=type=cache,target=/c ["sh", "-c", "cat <<EOF"]\nUSER 0\n', "0"),
        ("LABEL note=<<EOF\nUSER 0\n", "0"),
        ("RUN cat <<EOF ${X:=y}\nUSER 0\n", "0"),
    ],
    ids=[
        "plain",
        "double-quoted-word",
        "single-quoted-word",
        "chomp-with-descriptor",
        "copy",
        "onbuild-run",
        "two-in-turn",
        "terminator-indented",
        "terminator-trailing-space",
        "tabs-kept-without-dash",
        "tabs-removed-with-dash",
        "inside-double-quotes",
        "inside-single-quotes",
        "not-a-word-of-its-own",
        "exec-form",
        "exec-form-after-flags",
        "not-run-copy-add",
        "line-buildkit-cannot-lex",
    ],
)
def test_heredoc_bodies_are_skipped_only_where_buildkit_reads_heredocs(instruction, user):
    """A heredoc body is not read as instructions; text that only looks like one is."""
    assert user_of(SAFE + instruction) == user


# --- stages and variables ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dockerfile", "user"),
    [
        ("ARG UID=10001\n" + BASE + "USER ${UID:-0}\n", "0"),
        ("ARG UID=10001\n" + BASE + "ARG UID\nUSER ${UID:-0}\n", "10001"),
        ("ARG UID=0\n" + BASE + "ARG UID=10001\nUSER $UID\n", "10001"),
        ("ARG STAGE=app\nFROM x AS app\nUSER 0\nFROM ${STAGE}\n", "0"),
        ("FROM x AS app\nENV UID=10001\nFROM app\nUSER $UID\n", "10001"),
        ("FROM x AS app\nARG UID=0\nFROM app\nUSER ${UID:-10001}\n", "0"),
        (BASE + "ENV UID=10001\nARG UID=0\nUSER $UID\n", "0"),
        ("FROM x AS app\nENV UID=10001\nARG UID=0\nFROM app\nUSER $UID\n", "10001"),
        (BASE + "ARG A=0 B=$A\nUSER $B\n", "0"),
        (BASE + "ENV A=10001\nENV A=0 B=$A\nUSER $B\n", "10001"),
        ("FROM x AS app\nUSER 0\nFROM App\n", None),
    ],
    ids=[
        "global-arg-not-in-stage",
        "global-arg-redeclared",
        "stage-default-wins",
        "global-arg-in-from",
        "env-inherited",
        "stage-arg-inherited",
        "last-written-wins",
        "env-returns-in-child",
        "arg-defaults-in-turn",
        "env-pairs-see-earlier-values",
        "stage-names-match-exactly",
    ],
)
def test_variables_are_scoped_like_buildkit(dockerfile, user):
    """Global ARGs reach a stage only through `ARG NAME`; ARG and ENV flow down stages."""
    assert user_of(dockerfile) == user


@pytest.mark.parametrize(
    ("lines", "user", "unresolved"),
    [
        ("ARG X=1\nUSER ${X:+0}", "0", set()),
        ("ARG X=\nUSER ${X+0}", "0", set()),
        ("ARG X=\nUSER ${X:+10001}", "0", set()),
        ("ARG X=\nUSER ${X-10001}", "0", set()),
        ("ARG X=\nUSER ${X:-0}", "0", set()),
        ("USER ${NOPE:-${ALSO:-0}}", "0", set()),
        ("USER ${NOPE:+10001}", "0", {"NOPE"}),
        ("ENV A=0\nUSER \\$A", "$A", set()),
        ("ENV A=0\nUSER '$A'", "$A", set()),
        ('ENV A=0\nUSER "$A"', "0", set()),
        ("USER $NOPE", "$NOPE", {"NOPE"}),
        ("ARG U=10001\nUSER ${U%1}", "${U%1}", {"${U%...}"}),
        ("ARG U=10001\nUSER ${U/1/0}", "${U/1/0}", {"${U/...}"}),
        ("USER ${", "${", {"${ (not understood)"}),
    ],
)
def test_user_is_substituted_like_buildkit(lines, user, unresolved):
    """Defaults, alternatives, quotes and escapes; what cannot be known is reported."""
    image = parse_dockerfile(BASE + lines + "\n")
    assert (image.user, image.unresolved) == (user, unresolved)


@pytest.mark.parametrize(
    ("line", "user"),
    [
        ("USER :0", "0:0"),
        ('USER ""', "0"),
        ("USER ${NOPE:-}:10001", "0:10001"),
        ("USER +0", "0"),
        ("USER -0:0", "0:0"),
        ("USER 00", "0"),
        ("USER 4294967296", "0"),
        ("USER -- 0", "0"),
        ("USER 10001:0", "10001:0"),
        ("USER 99999999999999999999", "99999999999999999999"),
    ],
)
def test_users_the_runtime_reads_as_uid_0_are_written_0(line, user):
    """An empty user part is the default, root; so is any number Atoi reads as 0 in 32 bits."""
    assert user_of(BASE + line + "\n") == user


def test_onbuild_triggers_run_in_the_stage_built_from_it():
    """A stage's ONBUILD USER and CMD apply to the stage FROM it, not to itself."""
    triggers = "FROM x AS app\nUSER 10001\nONBUILD USER 0\nONBUILD CMD secureserve run --dev\n"
    assert user_of(triggers) == "10001"
    image = parse_dockerfile(triggers + "FROM app\n")
    assert (image.user, image.command) == ("0", ["secureserve", "run", "--dev"])


def test_from_flags_are_not_the_base():
    """`--platform linux/amd64` takes its value: the base is the dev stage, and inherited."""
    dev = "FROM x AS dev\nCMD secureserve run --dev\n"
    image = parse_dockerfile(dev + "FROM --platform linux/amd64 dev\nUSER 10001\n")
    assert image.command == ["secureserve", "run", "--dev"]


def test_from_an_unknown_variable_is_reported():
    """`FROM $BASE` without a value could be any stage or image."""
    assert parse_dockerfile("FROM $BASE\nUSER 10001\n").unresolved == {"BASE"}


def test_env_is_the_final_image_environment():
    """ENV values, quotes removed and variables expanded, ARGs not included."""
    dockerfile = (
        'FROM x AS app\nENV A=1 B="two words"\nARG C=3\n'
        "FROM app\nENV D=${A}4 E=$C\nENV F some value\n"
    )
    assert parse_dockerfile(dockerfile).env == {
        "A": "1",
        "B": "two words",
        "D": "14",
        "E": "3",
        "F": "some value",
    }


@pytest.mark.parametrize(
    ("line", "healthcheck"),
    [
        ("HEALTHCHECK none", False),
        ("HEALTHCHECK NONE", False),
        ("HEALTHCHECK --interval=5s CMD true", True),
        ('HEALTHCHECK CMD ["true"]', True),
    ],
)
def test_healthcheck(line, healthcheck):
    """`NONE` in any case disables the health check; flags come before the type."""
    assert parse_dockerfile(BASE + line + "\n").healthcheck is healthcheck


# --- the start command -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "command"),
    [
        (
            'ENTRYPOINT ["sh", "-c", "secureserve run --dev --port 8443"]',
            ["sh", "-c", "secureserve", "run", "--dev", "--port", "8443"],
        ),
        ("CMD secureserve run --dev", ["secureserve", "run", "--dev"]),
        ('CMD secureserve run "--dev"', ["secureserve", "run", "--dev"]),
        ('CMD ["secureserve", "run"] --dev', ["secureserve", "run"]),
        ("CMD secureserve run $MODE\nENV MODE=--dev", ["secureserve", "run", "--dev"]),
        (
            'ENV FLAGS="--dev --port 8443"\nCMD secureserve run $FLAGS',
            ["secureserve", "run", "--dev", "--port", "8443"],
        ),
        ("CMD secureserve run --dev\nCMD secureserve run", ["secureserve", "run"]),
        ('CMD ["--dev"]\nENTRYPOINT ["secureserve", "run"]', ["secureserve", "run", "--dev"]),
        (
            'CMD ["sh", "-c", "secureserve${IFS}run${IFS}--dev"]',
            ["sh", "-c", "secureserve", "run", "--dev"],
        ),
        ('ENTRYPO\u0130NT ["secureserve", "run", "--dev"]', ["secureserve", "run", "--dev"]),
    ],
    ids=[
        "sh-c-script",
        "shell-form",
        "quoted",
        "text-after-json-ignored",
        "env-set-later",
        "env-split-by-shell",
        "cmd-replaced",
        "cmd-before-entrypoint-kept",
        "ifs",
        "dotted-capital-i",
    ],
)
def test_start_command_words(lines, command):
    """ENTRYPOINT then CMD, as run: shell strings split, variables from the image ENV."""
    assert parse_dockerfile(SAFE + lines + "\n").command == command


def test_entrypoint_clears_an_inherited_cmd():
    """A dev CMD from the stage built on is dropped by the child's ENTRYPOINT."""
    dockerfile = 'FROM x AS app\nCMD secureserve run --dev\nFROM app\nENTRYPOINT ["secureserve"]\n'
    assert parse_dockerfile(dockerfile).command == ["secureserve"]


@pytest.mark.parametrize(
    ("lines", "unresolved"),
    [
        ("ARG MODE=--dev\nCMD secureserve run $MODE", {"MODE"}),
        ("ENV OPTS=$EXTRA\nCMD secureserve run $OPTS", {"EXTRA"}),
        ('CMD ["secureserve", 1]', {"CMD JSON array that is not all strings"}),
        ('CMD ["secureserve", "run", "--dev",]', {"CMD [...] that is not JSON"}),
        ("CMD secureserve run --workers $(nproc)", {"$(...)"}),
        ("CMD secureserve run ${MODE/a/b}", {"${MODE/...}"}),
    ],
    ids=["arg-gone-at-run-time", "env-from-unknown", "json-not-strings", "not-json", "$()", "/"],
)
def test_what_the_start_command_hides_is_reported(lines, unresolved):
    """Build args, unknown values, refused exec forms and shell features are marked."""
    assert parse_dockerfile(SAFE + lines + "\n").unresolved == unresolved


# --- hostile files -----------------------------------------------------------------------


def test_values_that_double_at_each_line_are_cut():
    """`ENV A=$A$A` repeated stays bounded: the value is cut at 4096 and marked."""
    image = parse_dockerfile(BASE + "ENV A=aaaa\n" + "ENV A=$A$A\n" * 20 + "USER $A\n")
    assert (len(image.user or ""), image.unresolved) == (
        4096,
        {"a value longer than 4096 characters"},
    )


def test_deep_nesting_is_refused():
    """`${A:-${A:-...}}` nested 200 deep is reported, not followed down the stack."""
    line = "USER " + "${A:-" * 200 + "0" + "}" * 200
    shown = line.removeprefix("USER ")[:40]
    assert parse_dockerfile(BASE + line + "\n").unresolved == {f"{shown}... (not understood)"}


def test_unresolved_names_are_capped():
    """Forty unknown names are reported as sixteen and a count."""
    line = "USER " + "".join(f"$U{i:02}" for i in range(40))
    unresolved = parse_dockerfile(BASE + line + "\n").unresolved
    assert unresolved == {f"U{i:02}" for i in range(16)} | {"24 more"}


# --- finding the file --------------------------------------------------------------------


def test_read_dockerfile_picks_the_name_docker_build_picks(tmp_path):
    """`Dockerfile`, then `dockerfile` (docker's CLI), then podman's `Containerfile`."""
    (tmp_path / "Containerfile").write_text("FROM containerfile\n", "utf-8")
    assert read_dockerfile(tmp_path) == (tmp_path / "Containerfile", "FROM containerfile\n")
    (tmp_path / "dockerfile").write_text("FROM lower\n", "utf-8")
    if (tmp_path / "Dockerfile").exists():
        pytest.skip("case-insensitive file system")
    assert read_dockerfile(tmp_path) == (tmp_path / "dockerfile", "FROM lower\n")
    (tmp_path / "Dockerfile").write_text("FROM upper\n", "utf-8")
    assert read_dockerfile(tmp_path) == (tmp_path / "Dockerfile", "FROM upper\n")


def test_read_dockerfile_without_one_is_none(tmp_path):
    """No Dockerfile at all is not an error."""
    assert read_dockerfile(tmp_path) is None


def test_read_dockerfile_decodes_with_replacement(tmp_path):
    """Bytes that are not UTF-8 do not stop the check."""
    (tmp_path / "Dockerfile").write_bytes(b"FROM x\nUSER 10001\xff\n")
    assert read_dockerfile(tmp_path) == (tmp_path / "Dockerfile", "FROM x\nUSER 10001\ufffd\n")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_fifo, "is not a regular file"),
        (Path.mkdir, "is not a regular file"),
        (lambda path: path.write_bytes(b"#" * (MAX_TEXT_BYTES + 1)), "is larger than"),
        (lambda path: path.symlink_to(path.parent / "missing"), "link to a missing file"),
    ],
    ids=["fifo", "directory", "too-large", "dangling-link"],
)
def test_read_dockerfile_refuses_the_file_docker_would_pick_but_cannot_be_read(
    tmp_path, make, reason
):
    """The chosen Dockerfile is refused with a reason naming it; a Containerfile is no excuse."""
    (tmp_path / "Containerfile").write_text(SAFE, "utf-8")
    make(tmp_path / "Dockerfile")
    with pytest.raises(ConfigError, match=reason) as refused:
        read_dockerfile(tmp_path)
    assert str(tmp_path / "Dockerfile") in str(refused.value)
    assert "\n" not in str(refused.value)
