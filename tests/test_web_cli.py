"""``twin serve``: its options, its token handling, and a real run on the real clock."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from twin.web import AuthConfigError
from twin.web.cli import add_parser, read_token, run


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="twin")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_serve_needs_a_fleet_model_and_defaults_to_loopback(capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    with pytest.raises(SystemExit):
        parse()
    assert "--fleet" in capsys.readouterr().err
    args = parse("--fleet", "f.json")
    assert (args.host, args.port, args.store, args.token_file) == ("127.0.0.1", 8080, None, None)
    assert args.run is run


def test_the_token_comes_from_its_file_else_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("from-the-file-0123456789\n")
    assert read_token(str(path), {"TWIN_TOKEN": "from-env-0123456789ab"}) == \
        "from-the-file-0123456789"
    assert read_token(None, {"TWIN_TOKEN": "from-env-0123456789ab"}) == "from-env-0123456789ab"
    assert read_token(None, {}) is None
    path.write_text("  \n")
    with pytest.raises(AuthConfigError, match="empty"):
        read_token(str(path), {})


def test_a_public_address_without_a_token_exits_2_before_starting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        example_dict: dict[str, Any]) -> None:
    monkeypatch.delenv("TWIN_TOKEN", raising=False)
    model = tmp_path / "fleet.json"
    model.write_text(json.dumps(example_dict))
    assert run(parse("--fleet", str(model), "--host", "0.0.0.0")) == 2
    assert "token is required" in capsys.readouterr().err


def test_twin_serve_runs_until_sigterm_and_never_prints_the_token(
        tmp_path: Path, example_dict: dict[str, Any]) -> None:
    model = tmp_path / "fleet.json"
    model.write_text(json.dumps(example_dict))
    token = "serve-test-token-0123456789"
    script = ("import sys; from twin.web.cli import run, add_parser; import argparse\n"
              "p = argparse.ArgumentParser(); add_parser(p.add_subparsers())\n"
              "sys.exit(run(p.parse_args(sys.argv[1:])))")
    env = {**os.environ, "TWIN_TOKEN": token}
    process = subprocess.Popen(
        [sys.executable, "-c", script, "serve", "--fleet", str(model), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert "live view of 1 owners" in banner and "http://127.0.0.1:" in banner
        assert "bearer token required" in banner
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert token not in banner + out + err


def test_twin_serve_with_shard_processes_serves_the_whole_tree(
        tmp_path: Path, example_dict: dict[str, Any]) -> None:
    import re
    import urllib.request

    model = tmp_path / "fleet.json"
    model.write_text(json.dumps(example_dict))
    process = subprocess.Popen(
        [sys.executable, "-m", "twin.cli", "serve", "--fleet", str(model), "--port", "0",
         "--shards", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        url = re.search(r"http://\S+/", banner)
        assert url is not None, banner
        with urllib.request.urlopen(f"{url.group(0)}api/rollups/acme") as reply:
            body = json.load(reply)
        assert body["expected"] == 5
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
