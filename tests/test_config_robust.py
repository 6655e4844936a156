"""Configuration edge cases from the field: BOM, warnings beside errors, the record folder,
unsafe car identifiers, credentials in the S3 endpoint, comments after a value."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from eccm import config as cfgmod
from eccm.config import ConfigError, load

REPO = Path(__file__).resolve().parents[1]
BOM = b"\xef\xbb\xbf"
S3_OK = "S3_SERVER_AK=AKIDEXAMPLE\nS3_SERVER_SK=sk-Example-99\nS3_SERVER_BUCKET=logs\n"


def write(tmp_path: Path, text: str, bom: bool = False, newline: str = "\n") -> Path:
    path = tmp_path / "config.ini"
    path.write_bytes((BOM if bom else b"") + text.replace("\n", newline).encode("utf-8"))
    return path


def eccm(command: str, path: Path, env_extra: Optional[Dict[str, str]] = None
         ) -> subprocess.CompletedProcess:
    """The real command line, in an environment without any ECCM_* variable."""
    env = {"PATH": "/usr/bin:/bin", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "eccm", command, "--config", str(path)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
                          stdin=subprocess.DEVNULL)


def lines(result: subprocess.CompletedProcess, kind: str) -> List[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith(f"config {kind}:")]


def one_error(result: subprocess.CompletedProcess, key: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Errno" not in result.stderr, result.stderr
    errors = lines(result, "error")
    assert len(errors) == 1, result.stderr
    assert key in errors[0], errors[0]
    return errors[0]


def problems_of(path: Path, environ: Optional[Dict[str, str]] = None) -> List[str]:
    with pytest.raises(ConfigError) as err:
        load(path, environ=environ or {})
    return err.value.problems


# 1. A UTF-8 BOM (Windows Notepad).

@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("header", [False, True], ids=["plain", "header"])
def test_bom_is_accepted(tmp_path, header, newline):
    text = ("[DEFAULT]\n" if header else "") + "CAR_IDENTIFIER=AB-123-CD\nRECORD_INTERVAL=2\n"
    path = write(tmp_path, text, bom=True, newline=newline)
    cfg, warnings = load(path, environ={})
    assert warnings == []
    assert cfg.CAR_IDENTIFIER == "AB-123-CD" and cfg.RECORD_INTERVAL == 2.0
    result = eccm("check-config", path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("bom", [False, True], ids=["no-bom", "bom"])
@pytest.mark.parametrize("header", [False, True], ids=["plain", "header"])
def test_line_numbers_are_the_editors(tmp_path, header, bom):
    """Line numbers count the file's own lines: not the [DEFAULT] line the loader adds to
    a plain KEY=value file, not a BOM."""
    head = "[DEFAULT]\n" if header else ""
    first = 2 if header else 1  # the line number of the first line after the header

    path = write(tmp_path, head + "CAR_IDENTIFIER=X\nRECORD_INTERVAL=1\nno equals sign\n",
                 bom=bom)
    (problem,) = problems_of(path)
    assert f"line {first + 2}:" in problem and "not a valid INI file" in problem
    assert not re.search(rf"line\s+{first + 3}\b", problem)
    assert "no equals sign" not in problem  # a line that is not KEY=value may be a secret

    path = write(tmp_path, head + "CAR_IDENTIFIER=X\nRECORD_INTERVAL=1\nRECORD_INTERVAL=2\n",
                 bom=bom)
    (problem,) = problems_of(path)
    assert f"line {first + 2}:" in problem and "RECORD_INTERVAL is set twice" in problem

    path = write(tmp_path, head + "# comment\nCAR_IDENTIFIER=X\n\nRECORD_INTERVAL=soon\n",
                 bom=bom)
    (problem,) = problems_of(path)
    assert problem.startswith(f"RECORD_INTERVAL = 'soon' (from config.ini line {first + 3})")


def test_bom_with_header_from_the_command_line(tmp_path):
    path = write(tmp_path, "[DEFAULT]\nCAR_IDENTIFIER=X\nOBD_TIMEOUT=100\n", bom=True,
                 newline="\r\n")
    error = one_error(eccm("check-config", path), "OBD_TIMEOUT")
    assert "config.ini line 3" in error


def test_a_utf16_file_is_one_clear_error(tmp_path):
    path = tmp_path / "config.ini"
    path.write_text("CAR_IDENTIFIER=X\n", encoding="utf-16")
    (problem,) = problems_of(path)
    assert "UTF-8" in problem


# 2. Warnings are shown beside errors.

MIXED = "FILE_RECORDNG=yes\nRECORD_INTERVAL=x\n[extra]\nFOO=1\n"


def test_config_error_carries_the_warnings(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, MIXED), environ={"ECCM_SOCKET_SERVER_PORTT": "1"})
    problems, warnings = " ".join(err.value.problems), " ".join(err.value.warnings)
    assert "CAR_IDENTIFIER" in problems and "RECORD_INTERVAL" in problems
    assert "did you mean FILE_RECORDING?" in warnings
    assert "section [extra] ignored" in warnings
    assert "did you mean SOCKET_SERVER_PORT?" in warnings


def test_unreadable_file_still_warns_about_the_environment(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, "[[[not ini\n"), environ={"ECCM_LOG_LEVELL": "INFO"})
    assert "not a valid INI file" in err.value.problems[0]
    assert "did you mean LOG_LEVEL?" in " ".join(err.value.warnings)


def test_check_config_prints_errors_and_warnings_together(tmp_path):
    """Needs cli._load_or_report to print ConfigError.warnings (patch in the report)."""
    result = eccm("check-config", write(tmp_path, MIXED))
    assert result.returncode == 2
    errors, warnings = lines(result, "error"), lines(result, "warning")
    assert len(errors) == 2, result.stderr
    assert any("did you mean FILE_RECORDING?" in w for w in warnings), result.stderr
    assert any("section [extra] ignored" in w for w in warnings), result.stderr


# 3. The record folder.

def folder_config(tmp_path: Path, folder: str, extra: str = "") -> Path:
    return write(tmp_path, f"CAR_IDENTIFIER=X\nRECORD_DIRECTORY_LOCATION={folder}\n{extra}")


def test_record_folder_that_is_a_file(tmp_path):
    (tmp_path / "records").write_text("not a folder")
    path = folder_config(tmp_path, "records")
    error = one_error(eccm("check-config", path), "RECORD_DIRECTORY_LOCATION")
    assert "'records'" in error and str(tmp_path / "records") in error
    assert "is a file, not a folder" in error
    one_error(eccm("run", path), "RECORD_DIRECTORY_LOCATION")


@pytest.mark.parametrize("below", ["records", "a/b/records"])
def test_record_folder_under_a_file_cannot_be_created(tmp_path, below):
    (tmp_path / "blocker").write_text("a file")
    folder = tmp_path / "blocker" / below
    path = folder_config(tmp_path, str(folder))
    for command in ("check-config", "run"):
        error = one_error(eccm(command, path), "RECORD_DIRECTORY_LOCATION")
        assert f"'{folder}'" in error and "cannot be created" in error
        assert f"{tmp_path / 'blocker'} is a file" in error


def _proc_sys_read_only() -> bool:
    return os.path.isdir("/proc/sys") and not os.access("/proc/sys", os.W_OK)


needs_proc_sys = pytest.mark.skipif(not _proc_sys_read_only(),
                                    reason="needs Linux /proc/sys (not writable, even by root)")


@needs_proc_sys
def test_record_folder_in_a_folder_nobody_may_write(tmp_path):
    """/proc/sys refuses writes even to root: the as-root stand-in for a parent folder
    without write permission."""
    path = folder_config(tmp_path, "/proc/sys/eccm-records")
    for command in ("check-config", "run"):
        error = one_error(eccm(command, path), "RECORD_DIRECTORY_LOCATION")
        assert "'/proc/sys/eccm-records'" in error
        assert "cannot be created" in error and "/proc/sys" in error


@needs_proc_sys
def test_record_folder_that_exists_but_is_not_writable(tmp_path):
    path = folder_config(tmp_path, "/proc/sys")
    error = one_error(eccm("check-config", path), "RECORD_DIRECTORY_LOCATION")
    assert "'/proc/sys'" in error and "cannot write" in error


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits; the /proc/sys "
                                              "tests cover this case as root")
def test_record_folder_without_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        error = one_error(eccm("check-config", folder_config(tmp_path, str(locked))),
                          "RECORD_DIRECTORY_LOCATION")
        assert "cannot write" in error
        error = one_error(eccm("check-config", folder_config(tmp_path, str(locked / "r"))),
                          "RECORD_DIRECTORY_LOCATION")
        assert "cannot be created" in error
    finally:
        locked.chmod(0o755)


def test_record_folder_whose_outbox_is_a_file(tmp_path):
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "outbox").write_text("oops")
    error = one_error(eccm("check-config", folder_config(tmp_path, "records")),
                      "RECORD_DIRECTORY_LOCATION")
    assert f"{tmp_path / 'records' / 'outbox'} is a file" in error


def test_record_folder_that_is_a_dangling_link(tmp_path):
    (tmp_path / "records").symlink_to(tmp_path / "gone")
    error = one_error(eccm("check-config", folder_config(tmp_path, "records")),
                      "RECORD_DIRECTORY_LOCATION")
    assert "symbolic link" in error and str(tmp_path / "gone") in error


def test_check_config_does_not_create_the_folder(tmp_path):
    result = eccm("check-config", folder_config(tmp_path, "new/records"))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "new").exists()


def test_record_folder_is_not_judged_when_nothing_uses_it(tmp_path):
    (tmp_path / "blocker").write_text("a file")
    path = folder_config(tmp_path, "blocker/records", "FILE_RECORDING=no\n")
    result = eccm("check-config", path)
    assert result.returncode == 0, result.stderr


def test_record_folder_is_judged_for_uploads_without_recording(tmp_path):
    """The uploader takes its files from the folder's outbox/ even with FILE_RECORDING=no."""
    (tmp_path / "blocker").write_text("a file")
    path = folder_config(tmp_path, "blocker/records",
                         "FILE_RECORDING=no\nS3_SERVER_ENDPOINT=http://127.0.0.1:8333\n" + S3_OK)
    one_error(eccm("check-config", path), "RECORD_DIRECTORY_LOCATION")


def test_record_folder_problem_comes_with_the_others(tmp_path):
    (tmp_path / "records").write_text("not a folder")
    problems = problems_of(folder_config(tmp_path, "records", "RECORD_INTERVAL=x\n"))
    assert len(problems) == 2
    assert any(p.startswith("RECORD_DIRECTORY_LOCATION") for p in problems)


# 4. CAR_IDENTIFIER.

@pytest.mark.parametrize("car", [".", "..", ".hidden", "-AB", "AB-", "_AB", "AB.", "A/B",
                                 "A B", "x" * 65])
def test_unsafe_car_identifiers_are_refused(tmp_path, car):
    (problem,) = problems_of(write(tmp_path, f"CAR_IDENTIFIER={car}\n"))
    assert problem.startswith(f"CAR_IDENTIFIER = {car!r}")
    assert "start and end with a letter or digit" in problem


@pytest.mark.parametrize("car", ["AB-123-CD", "X", "car_1", "fleet.7", "A..B", "x" * 64])
def test_ordinary_car_identifiers_stay_valid(tmp_path, car):
    cfg, _ = load(write(tmp_path, f"CAR_IDENTIFIER={car}\n"), environ={})
    assert cfg.CAR_IDENTIFIER == car


@pytest.mark.parametrize("car", ["..", "."])
def test_dot_car_identifier_exits_2(tmp_path, car):
    one_error(eccm("check-config", write(tmp_path, f"CAR_IDENTIFIER={car}\n")),
              "CAR_IDENTIFIER")


# 5. Credentials in the S3 endpoint.

USER, PASSWORD = "minioadmin", "Pa55-w0rd-Xy"


@pytest.mark.parametrize("endpoint,masked", [
    (f"http://{USER}:{PASSWORD}@127.0.0.1:9000", "http://***@127.0.0.1:9000"),
    (f"https://{USER}:{PASSWORD}@s3.example.net", "https://***@s3.example.net"),
    (f"{USER}:{PASSWORD}@minio.local:9000", "***@minio.local:9000"),
    (f"http://{USER}@127.0.0.1:9000", "http://***@127.0.0.1:9000"),
    (f"ftp://{USER}:{PASSWORD}@files", "ftp://***@files"),
    (f"http://{USER}:{PASSWORD}/x@host:9000", "http://***@host:9000"),  # '/' in the password
])
def test_credentials_in_the_endpoint_are_refused_and_never_shown(tmp_path, endpoint, masked):
    path = write(tmp_path, f"CAR_IDENTIFIER=X\nS3_SERVER_ENDPOINT={endpoint}\n" + S3_OK)
    result = eccm("check-config", path)
    error = one_error(result, "S3_SERVER_ENDPOINT")
    assert f"S3_SERVER_ENDPOINT = '{masked}'" in error
    assert "S3_SERVER_AK" in error and "S3_SERVER_SK" in error
    assert USER not in result.stdout + result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_credentials_in_the_endpoint_from_the_environment(tmp_path):
    result = eccm("check-config", write(tmp_path, "CAR_IDENTIFIER=X\n" + S3_OK),
                  {"ECCM_S3_SERVER_ENDPOINT": f"http://{USER}:{PASSWORD}@127.0.0.1:9000"})
    error = one_error(result, "S3_SERVER_ENDPOINT")
    assert "(from environment)" in error
    assert PASSWORD not in result.stdout + result.stderr


def test_describe_masks_credentials_in_an_endpoint(tmp_path):
    cfg, _ = load(write(tmp_path, "CAR_IDENTIFIER=X\n"), environ={})
    cfg = cfg.replace(S3_SERVER_ENDPOINT=f"http://{USER}:{PASSWORD}@h:9000")
    shown = dict((key, value) for key, value, _ in cfg.describe())
    assert shown["S3_SERVER_ENDPOINT"] == "http://***@h:9000"


# 6. Comments after a value.

@pytest.mark.parametrize("marker", [";", "#"])
@pytest.mark.parametrize("key", list(cfgmod.SCHEMA))
def test_a_comment_after_any_value_is_an_error(tmp_path, key, marker):
    head = "" if key == "CAR_IDENTIFIER" else "CAR_IDENTIFIER=X\n"
    problems = problems_of(write(tmp_path, f"{head}{key}=1 {marker} the note\n"))
    mine = [p for p in problems if p.startswith(key + " ") or p.startswith(key + ":")]
    assert len(mine) == 1 and "comment" in mine[0], problems
    # Not shown: secrets, and what follows '?' or '#' in an endpoint (it may be signed).
    hidden = cfgmod.SCHEMA[key].secret or (key == "S3_SERVER_ENDPOINT" and marker == "#")
    assert ("the note" in mine[0]) != hidden


@pytest.mark.parametrize("value", ["; auto", "# auto", "x\t# tab before"])
def test_a_comment_alone_or_after_a_tab_is_an_error(tmp_path, value):
    (problem,) = problems_of(write(tmp_path, f"CAR_IDENTIFIER=X\nOBD_INTERFACE= {value}\n"))
    assert problem.startswith("OBD_INTERFACE") and "comment" in problem


def test_a_commented_secret_exits_2_and_is_never_printed(tmp_path):
    secret = "Zebra-Secret-77"
    path = write(tmp_path, f"CAR_IDENTIFIER=X\nSOCKET_SERVER_SECRET={secret} ; for the app\n")
    result = eccm("check-config", path)
    error = one_error(result, "SOCKET_SERVER_SECRET")
    assert "config.ini line 2" in error and "comment" in error
    assert secret not in result.stdout + result.stderr
    assert "for the app" not in result.stdout + result.stderr


@pytest.mark.parametrize("key,value", [
    ("SOCKET_SERVER_SECRET", "ab;c#d"), ("SOCKET_SERVER_SECRET", "#start"),
    ("S3_SERVER_SK", "x;y;z#"), ("MONITORING_FILE_SEPARATION_CHARACTER", ";"),
    ("MONITORING_FILE_SEPARATION_CHARACTER", "#"), ("OBD_INTERFACE", "/dev/serial#1"),
])
def test_semicolons_and_hashes_inside_a_value_are_kept(tmp_path, key, value):
    extra = ("S3_SERVER_ENDPOINT=http://127.0.0.1:8333\nS3_SERVER_AK=a\nS3_SERVER_BUCKET=logs\n"
             if key == "S3_SERVER_SK" else "")
    cfg, _ = load(write(tmp_path, f"CAR_IDENTIFIER=X\n{key} = {value}\n{extra}"), environ={})
    assert getattr(cfg, key) == value


def test_dotenv_comments_are_refused_like_the_files(tmp_path):
    """In .env too, a comment after an unquoted value is an error naming the key and line
    (python-dotenv would cut ' #' and keep ' ;' in the secret, silently); quoted values
    are kept whole; the environment is taken as it is."""
    path = write(tmp_path, "CAR_IDENTIFIER=X\n")
    (tmp_path / ".env").write_text('SOCKET_SERVER_SECRET=abcdefghijklmnopq ; my secret\n'
                                   'OBD_INTERFACE=/dev/a # note\n')
    result = eccm("check-config", path)
    assert result.returncode == 2
    errors = lines(result, "error")
    assert any("SOCKET_SERVER_SECRET (from .env line 1): expected no comment" in e
               for e in errors), errors
    assert any("OBD_INTERFACE (from .env line 2)" in e for e in errors), errors
    assert "abcdefghijklmnopq" not in result.stdout + result.stderr
    (tmp_path / ".env").write_text('SOCKET_SERVER_SECRET="p # q ; r"\n')
    folder = tmp_path / "r ; x"
    cfg, _ = load(path, environ={"ECCM_RECORD_DIRECTORY_LOCATION": str(folder),
                                 "ECCM_GNSS_PORT": "/dev/g ; b"})
    assert cfg.SOCKET_SERVER_SECRET == "p # q ; r"
    assert cfg.GNSS_PORT == "/dev/g ; b"
    assert cfg.RECORD_DIRECTORY_LOCATION == str(folder)


def test_a_comment_in_dotenv_overridden_by_the_environment_is_not_an_error(tmp_path):
    path = write(tmp_path, "CAR_IDENTIFIER=X\n")
    (tmp_path / ".env").write_text("GNSS_PORT=/dev/a ; old\n")
    cfg, _ = load(path, environ={"ECCM_GNSS_PORT": "/dev/gnss"})
    assert cfg.GNSS_PORT == "/dev/gnss"


@pytest.mark.parametrize("car", ["DEMO", "demo"])
def test_the_demo_cars_identifier_is_reserved(tmp_path, car):
    """A real car named DEMO would upload the simulated car's drives as its own."""
    error = one_error(eccm("check-config", write(tmp_path, f"CAR_IDENTIFIER={car}\n")),
                      "CAR_IDENTIFIER")
    assert "simulated car" in error
    cfg, _ = load(None, environ={"ECCM_CAR_IDENTIFIER": "DEMO",
                                 "ECCM_RECORD_DIRECTORY_LOCATION": str(tmp_path / "d")},
                  demo=True)
    assert cfg.CAR_IDENTIFIER == "DEMO"


def test_an_endpoint_query_is_refused_and_never_printed(tmp_path):
    path = write(tmp_path, "CAR_IDENTIFIER=X\nS3_SERVER_ENDPOINT=https://s3.example.com/"
                           "?X-Amz-Credential=AKIAEXAMPLE&secret=pa55word\n")
    result = eccm("check-config", path)
    error = one_error(result, "S3_SERVER_ENDPOINT")
    assert "query" in error
    assert "AKIAEXAMPLE" not in result.stdout + result.stderr
    assert "pa55word" not in result.stdout + result.stderr


@pytest.mark.parametrize("secret", ["abc>>def-0123456789xyz", "HMAC two-words-0123456789"])
def test_a_secret_that_auth_could_never_give_is_refused(tmp_path, secret):
    path = write(tmp_path, f"CAR_IDENTIFIER=X\nSOCKET_SERVER_SECRET={secret}\n")
    result = eccm("check-config", path)
    one_error(result, "SOCKET_SERVER_SECRET")
    assert secret not in result.stdout + result.stderr
