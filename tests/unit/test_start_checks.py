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
