"""Server settings (defaults < file < environment < flags), the TOML file, the token sources,
`chextriev serve --print-config`, and the gunicorn pieces that need no process: options,
reload with a broken configuration, the request clock."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from chextriev.errors import UnknownNameError
from server import cli
from server.config import (
    SETTINGS,
    ConfigError,
    read_config_file,
    resolve_config,
    resolve_settings,
)
from server.serving import (
    ChextrievServer,
    ChextrievWorker,
    RequestClock,
    bind_address,
    gunicorn_options,
)

TOKEN = "a-long-random-token-0123456789"


def test_precedence_is_default_file_environment_flag(tmp_path):
    config = tmp_path / "chextriev.toml"
    config.write_text('workers = 2\nthreads = 3\nport = 9000\ndevice = "cuda"\n')
    environ = {"CHEXTRIEV_THREADS": "5", "CHEXTRIEV_PORT": "9100"}
    resolved = resolve_settings({"PORT": 9200}, environ, config)
    values, sources = resolved.values, resolved.sources
    assert values["TIMEOUT"] == 120 and sources["TIMEOUT"] == "default"
    assert values["WORKERS"] == 2 and sources["WORKERS"] == f"file {config}"
    assert values["DEVICE"] == "cuda"
    assert values["THREADS"] == 5 and sources["THREADS"] == "environment CHEXTRIEV_THREADS"
    assert values["PORT"] == 9200 and sources["PORT"] == "flag"


def test_the_file_can_come_from_the_environment_and_create_app_reads_it(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("max_upload_mb = 2\nmax_pixels = 1000\n")
    app_config = resolve_config({}, environ={"CHEXTRIEV_CONFIG": str(config)})
    assert app_config["MAX_CONTENT_LENGTH"] == 2 * 1024 * 1024 and app_config["MAX_PIXELS"] == 1000
    # CONFIG_FILE None: no file, whatever the environment says (what each worker gets)
    assert resolve_config({"CONFIG_FILE": None}, environ={"CHEXTRIEV_CONFIG": str(config)})["MAX_PIXELS"] > 1000


def test_unknown_key_in_the_file_lists_the_valid_ones(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("wrokers = 4\n")
    with pytest.raises(UnknownNameError) as caught:
        read_config_file(config)
    message = str(caught.value)
    assert "'wrokers'" in message and str(config) in message
    assert all(setting.name in message for setting in SETTINGS)
    config.write_text("[server]\nworkers = 4\n")  # no sections: a table is an unknown key too
    with pytest.raises(UnknownNameError, match="'server'"):
        read_config_file(config)


@pytest.mark.parametrize("text, message", [
    ("workers = 'four'", "workers in .* must be an integer"),
    ("workers = 0", "workers in .* must be at least 1"),
    ("port = 70000", "port in .* must be at most 65535"),
    ("threads = 2.5", "must be an integer"),
    ("timeout = true", "must be an integer"),
    ("host = 127", "host in .* must be a string"),
    ("workers = ", "not valid TOML"),
])
def test_bad_values_in_the_file_say_which_key_and_file(tmp_path, text, message):
    config = tmp_path / "c.toml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        read_config_file(config)


def test_bad_environment_values_name_the_variable():
    with pytest.raises(ConfigError, match="CHEXTRIEV_WORKERS must be an integer"):
        resolve_settings({}, {"CHEXTRIEV_WORKERS": "many"}, None)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_settings({}, {}, tmp_path / "nope.toml")


def test_relative_paths_in_the_file_are_relative_to_its_folder(tmp_path):
    (tmp_path / "deploy").mkdir()
    config = tmp_path / "deploy" / "c.toml"
    config.write_text('checkpoint = "models/best.ckpt"\nindex_dir = "/srv/index"\ndb = "sqlite:///x.db"\n')
    values = read_config_file(config)
    assert values["CHECKPOINT"] == str(tmp_path / "deploy" / "models" / "best.ckpt")
    assert values["INDEX_DIR"] == "/srv/index" and values["DB_URL"] == "sqlite:///x.db"


def test_token_from_file_or_environment_higher_layer_wins(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = tmp_path / "c.toml"
    config.write_text(f'token_file = "{token_file}"\nhost = "0.0.0.0"\ntls_proxy = "10.0.0.5"\n')
    assert resolve_config({"CONFIG_FILE": config}, environ={})["AUTH_TOKEN"] == TOKEN
    # the environment's token is above the file's token_file
    env_token = "environment-token-abcdefghijkl"
    assert resolve_config({"CONFIG_FILE": config}, environ={"CHEXTRIEV_AUTH_TOKEN": env_token})["AUTH_TOKEN"] \
        == env_token
    # a --token-file flag is above the environment
    assert resolve_config({"CONFIG_FILE": config, "TOKEN_FILE": str(token_file)},
                          environ={"CHEXTRIEV_AUTH_TOKEN": env_token})["AUTH_TOKEN"] == TOKEN
    token_file.write_text("short")
    with pytest.raises(ConfigError, match="shorter than 16"):
        resolve_config({"CONFIG_FILE": config}, environ={})
    # off loopback without any token: refused
    config.write_text('host = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match="without a bearer token"):
        resolve_config({"CONFIG_FILE": config}, environ={})


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_every_setting_has_a_flag_with_its_default_and_variable_in_the_help(capsys):
    with pytest.raises(SystemExit):
        _parse("--help")
    text = " ".join(capsys.readouterr().out.split())
    for setting in SETTINGS:
        assert setting.flag in text and setting.env_var in text
    assert "default 127.0.0.1" in text and "default 120" in text and "--config" in text
    args = _parse("--workers", "3", "--index-dir", "/x")
    assert cli.given_flags(args) == {"WORKERS": 3, "INDEX_DIR": "/x"}


def test_serve_compile_flag_takes_the_spellings_of_the_other_commands(capsys):
    assert [cli.given_flags(_parse("--compile", text))["COMPILE"] for text in ("1", "YES", "off")] == [
        "on", "on", "off"]
    with pytest.raises(SystemExit):
        _parse("--compile", "fast")
    assert "off, on" in capsys.readouterr().err


def test_serve_needs_an_index_dir_and_a_checkpoint_from_somewhere(tmp_path, monkeypatch):
    import numpy as np

    from indexer.vector_index import VectorIndex

    for name in ("CHEXTRIEV_CONFIG", "CHEXTRIEV_CHECKPOINT", "CHEXTRIEV_INDEX_DIR", "CHEXTRIEV_DETECTOR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="missing index_dir .*--index-dir.*CHEXTRIEV_INDEX_DIR"):
        cli.resolve_for_serving(_parse())
    with pytest.raises(ConfigError, match="no index in .*run `chextriev index`"):
        cli.resolve_for_serving(_parse("--index-dir", str(tmp_path)))
    with pytest.raises(ConfigError, match="checkpoint .*nope.ckpt does not exist"):
        cli.resolve_for_serving(_parse("--index-dir", str(tmp_path), "--checkpoint", str(tmp_path / "nope.ckpt")))
    # an index that records no checkpoint (saved through the Python API): --checkpoint is needed
    VectorIndex.build(np.arange(1, 4), np.eye(3, 8, dtype=np.float32)).save(tmp_path, checkpoint_id="abc")
    with pytest.raises(ConfigError, match="does not record its checkpoint.*pass --checkpoint .*abc"):
        cli.resolve_for_serving(_parse("--index-dir", str(tmp_path)))


def test_print_config_shows_values_and_sources(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('workers = 2\nindex_dir = "/srv/index"\n')
    result = subprocess.run([sys.executable, "-m", "server.cli", "--config", str(config), "--port", "9001",
                             "--print-config"], capture_output=True, text=True, timeout=60, check=False,
                            env={"PATH": "/usr/bin:/bin", "CHEXTRIEV_THREADS": "6"})
    assert result.returncode == 0, result.stderr
    lines = {line.split("=")[0].strip(): line for line in result.stdout.splitlines() if "=" in line}
    assert "2" in lines["workers"] and f"file {config}" in lines["workers"]
    assert "6" in lines["threads"] and "environment CHEXTRIEV_THREADS" in lines["threads"]
    assert "9001" in lines["port"] and "# flag" in lines["port"]
    assert "default" in lines["timeout"]
    # the printed document is itself a valid configuration file (comments and all)
    printed = tmp_path / "printed.toml"
    printed.write_text(result.stdout)
    assert read_config_file(printed)["WORKERS"] == 2


def test_gunicorn_options_follow_the_settings():
    values = resolve_config({"WORKERS": 3, "THREADS": 2, "TIMEOUT": 9, "PORT": 8123, "CONFIG_FILE": None},
                            environ={})
    options = gunicorn_options(values)
    assert options["bind"] == ["127.0.0.1:8123"] and options["workers"] == 3 and options["threads"] == 2
    assert options["timeout"] == 9 and options["worker_class"] is ChextrievWorker
    assert options["preload_app"] is False and options["control_socket_disable"] is True
    assert bind_address("::1", 80) == "[::1]:80"


def test_reload_with_a_broken_configuration_keeps_the_running_one(caplog):
    good = resolve_config({"WORKERS": 2, "CONFIG_FILE": None}, environ={})
    calls = iter([good])

    def resolve():
        value = next(calls, None)
        if value is None:
            raise ConfigError("workers in /etc/chextriev.toml must be an integer, got 'two'")
        return value

    server = ChextrievServer(resolve, lambda settings: None)
    assert server.cfg.workers == 2
    assert server.refresh() is False  # what SIGHUP calls first
    assert server.settings is good and server.cfg.workers == 2
    assert "configuration not reloaded" in caplog.text and "must be an integer" in caplog.text


def test_request_clock_reports_the_oldest_running_request():
    now = [100.0]
    clock = RequestClock(lambda: now[0])
    assert clock.oldest() is None
    first = clock.start("POST /api/v1/search")
    now[0] = 103.0
    clock.start("GET /api/v1/readyz")
    now[0] = 110.0
    assert clock.oldest() == (10.0, "POST /api/v1/search")
    clock.finish(first)
    assert clock.oldest() == (7.0, "GET /api/v1/readyz")
