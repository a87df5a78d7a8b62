"""The start-up checks every process runs, for every problem: each role runs one of them at
start and exits with its message (tests/workers/test_start_commands.py starts each role with
its documented command, once per check).

- the settings: `Settings.from_env()` over the environment (celeryconfig for the workers and
  beat, `vcm api` and `vcm run` directly), SystemExit with the message;
- the pools file: the workers build their runtime, whose `PoolsFile` reads it (its error
  stops start-up through `cannot_start`); beat, `vcm api` and `vcm run` call
  `require_valid_pools`."""

from __future__ import annotations

import pytest

from tests.support.start_checks import (
    INVALID_POOLS,
    INVALID_SETTINGS,
    pools_message,
    setting_messages,
)
from workers.adapters.pools_file import PoolsFile
from workers.bootstrap import cannot_start, require_valid_pools
from workers.core.errors import ConfigError
from workers.settings import Settings


@pytest.mark.parametrize("problem", list(INVALID_POOLS))
def test_an_invalid_pools_file_stops_start_up_naming_the_file_the_pool_and_the_field(
        problem, tmp_path, monkeypatch):
    path = tmp_path / "pools.yaml"
    path.write_text(INVALID_POOLS[problem][0])
    monkeypatch.setenv("VCM_POOLS_FILE", str(path))
    # the workers' runtime reads it
    with pytest.raises(ConfigError) as error:
        PoolsFile(Settings.from_env().pools_file)
    with pytest.raises(SystemExit) as worker:
        cannot_start(error.value)
    # beat, vcm api and vcm run check it
    with pytest.raises(SystemExit) as others:
        require_valid_pools()
    for stopped in (worker, others):
        assert str(stopped.value.code).startswith(pools_message(path, problem)), \
            stopped.value.code


@pytest.mark.parametrize("problem", list(INVALID_SETTINGS))
def test_a_setting_no_process_can_use_stops_start_up_naming_the_variable(problem, monkeypatch):
    variable, value, _ = INVALID_SETTINGS[problem]
    monkeypatch.setenv(variable, value.format(port=6379))
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env()
    message = str(stopped.value.code)
    first, *rest = setting_messages(problem)
    assert message.startswith(first), message
    assert all(part in message for part in rest), message


@pytest.mark.parametrize(("variable", "value", "message"), [
    # a ConfigMap holds at most 1 MiB: a shard of more would be refused by every apiserver
    ("VCM_MIRROR_SHARD_BYTES", "1048576",
     "VCM_MIRROR_SHARD_BYTES='1048576': a whole number from 1024 to 1032192"),
    ("VCM_MIRROR_SHARD_BYTES", "512", "VCM_MIRROR_SHARD_BYTES='512': a whole number from 1024"),
    ("VCM_MIRROR_SHARD_BYTES", "64Ki", "VCM_MIRROR_SHARD_BYTES='64Ki': not a whole number"),
    ("VCM_MIRROR_TIMEOUT", "0", "VCM_MIRROR_TIMEOUT: must be at least 0.1s"),
    ("VCM_MIRROR_TIMEOUT", "soon", "VCM_MIRROR_TIMEOUT: 'soon' is not seconds"),
    ("VCM_MIRROR_TIMEOUT", "1h", "VCM_MIRROR_TIMEOUT: 3600s is more than the maximum 600s"),
])
def test_the_configmap_mirror_s_shard_size_and_timeout_are_checked_naming_the_variable(
        variable, value, message):
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env({variable: value})
    assert str(stopped.value.code).startswith(f"invalid setting {message}"), stopped.value.code


def test_the_configmap_mirror_s_shard_size_and_timeout_have_their_defaults():
    settings = Settings.from_env({})
    assert (settings.mirror_shard_bytes, settings.mirror_timeout) == (1_048_576 - 32 * 1024, 5.0)
    settings = Settings.from_env({"VCM_MIRROR_SHARD_BYTES": "16384", "VCM_MIRROR_TIMEOUT": "2m"})
    assert (settings.mirror_shard_bytes, settings.mirror_timeout) == (16384, 120.0)


@pytest.mark.parametrize(("value", "message"), [
    # an empty item shifts every later pause to another try: a typo, not a shorter list
    ("1s,,2s", "VCM_CONTROLLER_RETRY_PAUSES: '1s,,2s': an empty pause between commas"),
    ("1s,2s,", "VCM_CONTROLLER_RETRY_PAUSES: '1s,2s,': an empty pause between commas"),
    (",1s", "VCM_CONTROLLER_RETRY_PAUSES: ',1s': an empty pause between commas"),
    (" , ", "VCM_CONTROLLER_RETRY_PAUSES: name at least one pause"),
    ("1s,0", "VCM_CONTROLLER_RETRY_PAUSES: '0': a pause must be longer than 0s"),
    ("1s,nan", "VCM_CONTROLLER_RETRY_PAUSES: 'nan' is not seconds"),
    ("1s,1e400", "VCM_CONTROLLER_RETRY_PAUSES: '1e400' is not seconds"),
    ("2h", "VCM_CONTROLLER_RETRY_PAUSES: 7200s is more than the maximum 3600s"),
])
def test_the_controller_s_retry_pauses_are_checked_naming_the_variable(value, message):
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env({"VCM_CONTROLLER_RETRY_PAUSES": value})
    assert str(stopped.value.code).startswith(f"invalid setting {message}"), stopped.value.code
    pauses = Settings.from_env({"VCM_CONTROLLER_RETRY_PAUSES": " 1s, 2.5 ,1m "})
    assert pauses.controller_retry_pauses == (1.0, 2.5, 60.0)


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("VCM_WORKER_STUCK_AFTER", "0.5", "VCM_WORKER_STUCK_AFTER: must be at least 1s"),
    ("VCM_WORKER_STUCK_AFTER", "soon", "VCM_WORKER_STUCK_AFTER: 'soon' is not seconds"),
    ("VCM_WORKER_STUCK_AFTER", "2d", "VCM_WORKER_STUCK_AFTER: 172800s is more than the maximum"),
    # Celery's node_format, which the worker expands it with, raises on any other %x
    ("VCM_WORKER_LIVENESS_FILE", "/tmp/vcm-%i.alive",
     "VCM_WORKER_LIVENESS_FILE='/tmp/vcm-%i.alive': %i is not one of %n, %h, %d"),
    ("VCM_WORKER_LIVENESS_FILE", "/tmp/a\nb",
     "VCM_WORKER_LIVENESS_FILE: must not contain control characters"),
])
def test_the_worker_liveness_settings_are_checked_naming_the_variable(variable, value, message):
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env({variable: value})
    assert str(stopped.value.code).startswith(f"invalid setting {message}"), stopped.value.code


def test_the_worker_liveness_settings_have_their_defaults_and_off():
    settings = Settings.from_env({})
    assert (settings.worker_liveness_file, settings.worker_stuck_after) == \
        ("/tmp/vcm-%n.alive", 300.0)
    for off in ("off", "none", " OFF ", ""):
        assert Settings.from_env({"VCM_WORKER_LIVENESS_FILE": off}).worker_liveness_file is None
