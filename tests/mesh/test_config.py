"""Config loading: precedence, conversions, and errors that name the field and source."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from mesh.config import (
    Address,
    ConfigError,
    NonNegativeInt,
    OptionalAddress,
    Port,
    PositiveFloat,
    Range,
    env_var_name,
    load_config,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    max_wait_ms: float = 5.0
    tls: bool = False
    tokens: tuple[str, ...] = ()
    ports: tuple[int, ...] = (1, 2)
    state_dir: Path = Path(".letmesh")
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if not 0 < self.http_port < 65536:
            raise ValueError(f"http_port {self.http_port} is out of range")


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "letmesh.toml"
    path.write_text(text)
    return path


def test_defaults_when_no_source_is_given() -> None:
    assert load_config(GatewayConfig, env={}) == GatewayConfig()


@pytest.mark.parametrize(
    ("toml", "env", "flags", "expected_port"),
    [
        (None, {}, {}, 8000),
        ("http_port = 8100", {}, {}, 8100),
        ("http_port = 8100", {"LETMESH_HTTP_PORT": "8200"}, {}, 8200),
        ("http_port = 8100", {"LETMESH_HTTP_PORT": "8200"}, {"http_port": 8300}, 8300),
        (None, {"LETMESH_HTTP_PORT": "8200"}, {"http_port": 8300}, 8300),
        (None, {}, {"http_port": 8300}, 8300),
        ("http_port = 8100", {}, {"http_port": 8300}, 8300),
        # argparse leaves unset options at None: they must not override lower sources
        ("http_port = 8100", {"LETMESH_HTTP_PORT": "8200"}, {"http_port": None}, 8200),
    ],
)
def test_precedence_defaults_toml_env_flags(
    tmp_path: Path, toml: str | None, env: dict[str, str], flags: dict[str, Any], expected_port: int
) -> None:
    path = write_toml(tmp_path, toml) if toml is not None else None
    config = load_config(GatewayConfig, toml_path=path, env=env, flags=flags)
    assert config.http_port == expected_port


def test_each_source_only_overrides_the_fields_it_sets(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'http_host = "0.0.0.0"\nmax_wait_ms = 7\ntokens = ["t1", "t2"]\nstate_dir = "/srv/lm"\n',
    )
    config = load_config(
        GatewayConfig,
        toml_path=path,
        env={"LETMESH_TLS": "yes", "LETMESH_MAX_WAIT_MS": "2.5", "OTHER": "x"},
        flags={"tokens": ["flag-token"], "command": "gateway", "key-file": "/k/key"},
    )
    assert config == GatewayConfig(
        http_host="0.0.0.0",
        http_port=8000,
        max_wait_ms=2.5,
        tls=True,
        tokens=("flag-token",),
        ports=(1, 2),
        state_dir=Path("/srv/lm"),
        key_file=Path("/k/key"),
    )
    assert isinstance(config.max_wait_ms, float)


def test_section_reads_its_table_and_prefixed_env_only(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        "[gateway]\nhttp_port = 9000\nmax_wait_ms = 1.5\n\n[controller]\nanything = 1\n",
    )
    env = {"LETMESH_MAX_WAIT_MS": "99", "LETMESH_GATEWAY_TLS": "true"}
    config = load_config(GatewayConfig, toml_path=path, env=env, section="gateway")
    assert config.http_port == 9000
    assert config.max_wait_ms == 1.5  # the unprefixed variable belongs to no section
    assert config.tls is True
    assert env_var_name("http_port", "gateway") == "LETMESH_GATEWAY_HTTP_PORT"
    assert env_var_name("http_port") == "LETMESH_HTTP_PORT"


def test_missing_section_means_defaults(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[controller]\nport = 1\n")
    assert load_config(GatewayConfig, toml_path=path, env={}, section="gateway") == GatewayConfig()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("true", True),
        ("Yes", True),
        ("on", True),
        ("0", False),
        ("FALSE", False),
        ("no", False),
        (" off ", False),
    ],
)
def test_env_bool_words(text: str, expected: bool) -> None:
    assert load_config(GatewayConfig, env={"LETMESH_TLS": text}).tls is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b,c", ("a", "b", "c")),
        (" a , b ", ("a", "b")),
        ("a,", ("a",)),
        ("", ()),
    ],
)
def test_env_tuples_are_comma_separated(text: str, expected: tuple[str, ...]) -> None:
    assert load_config(GatewayConfig, env={"LETMESH_TOKENS": text}).tokens == expected


def test_env_typed_tuples_optional_paths_and_strings() -> None:
    config = load_config(
        GatewayConfig,
        env={"LETMESH_PORTS": "5,6", "LETMESH_KEY_FILE": "/etc/k", "LETMESH_HTTP_HOST": " h "},
    )
    assert config.ports == (5, 6)
    assert config.key_file == Path("/etc/k")
    assert config.http_host == " h "  # strings are taken as given
    assert load_config(GatewayConfig, env={"LETMESH_KEY_FILE": ""}).key_file is None


def test_env_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LETMESH_HTTP_PORT", "8765")
    assert load_config(GatewayConfig).http_port == 8765


def test_string_flags_are_parsed_like_env() -> None:
    config = load_config(GatewayConfig, env={}, flags={"http_port": "8080", "tls": "false"})
    assert (config.http_port, config.tls) == (8080, False)


@pytest.mark.parametrize(
    ("source", "value", "needle"),
    [
        ("env", {"LETMESH_HTTP_PORT": "x"}, "http_port: expected an integer, got 'x' (from environment variable LETMESH_HTTP_PORT)"),
        ("env", {"LETMESH_TLS": "maybe"}, "tls: expected one of 1/0/true/false/yes/no, got 'maybe' (from environment variable LETMESH_TLS)"),
        ("env", {"LETMESH_MAX_WAIT_MS": "nan"}, "max_wait_ms: NaN"),
        ("env", {"LETMESH_PORTS": "1,x"}, "ports: expected an integer, got 'x' (from environment variable LETMESH_PORTS)"),
        ("toml", 'http_port = "8000"', "http_port: expected int, got '8000' (from "),
        ("toml", "tls = 1", "tls: expected bool"),
        ("toml", "http_port = true", "http_port: expected int"),
        ("toml", 'tokens = "a,b"', "tokens: expected a list"),
        ("toml", "tokens = [1, 2]", "tokens: expected str"),
        ("flags", {"http_port": 8.5}, "http_port: expected int, got 8.5 (from flag --http-port)"),
        ("flags", {"max_wait_ms": "fast"}, "max_wait_ms: expected a number, got 'fast' (from flag --max-wait-ms)"),
    ],
)
def test_bad_values_name_field_and_source(
    tmp_path: Path, source: str, value: Any, needle: str
) -> None:
    kwargs: dict[str, Any] = {"env": {}}
    if source == "env":
        kwargs["env"] = value
    elif source == "toml":
        kwargs["toml_path"] = write_toml(tmp_path, value)
    else:
        kwargs["flags"] = value
    with pytest.raises(ConfigError) as info:
        load_config(GatewayConfig, **kwargs)
    assert needle in str(info.value)
    if source == "toml":
        assert str(tmp_path / "letmesh.toml") in str(info.value)


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "http_prot = 1\n")
    with pytest.raises(ConfigError, match="^http_prot: unknown key; did you mean 'http_port'"):
        load_config(GatewayConfig, toml_path=path, env={})


def test_unknown_key_in_section_is_named(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[gateway]\nverbose = true\n")
    with pytest.raises(ConfigError, match=r"^gateway.verbose: unknown key \(from .*\[gateway\]\)"):
        load_config(GatewayConfig, toml_path=path, env={}, section="gateway")


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "gateway = 3\n")
    with pytest.raises(ConfigError, match="gateway"):
        load_config(GatewayConfig, toml_path=path, env={}, section="gateway")


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(GatewayConfig, toml_path=tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(GatewayConfig, toml_path=write_toml(tmp_path, "http_port = = 1"), env={})


def test_value_rejected_by_the_dataclass_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        load_config(GatewayConfig, env={"LETMESH_HTTP_PORT": "70000"})


def test_result_is_frozen() -> None:
    config = load_config(GatewayConfig, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.http_port = 1  # type: ignore[misc]


def test_config_classes_that_cannot_be_loaded_are_rejected() -> None:
    @dataclass
    class Mutable:
        port: int = 1

    @dataclass(frozen=True)
    class NoDefault:
        port: int

    @dataclass(frozen=True)
    class Nested:
        inner: dict[str, int] = dataclasses.field(default_factory=dict)

    for cls in (Mutable, NoDefault, Nested, int):
        with pytest.raises(TypeError):
            load_config(cls, env={})


# --- choices and ranges --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checked:
    selection: Literal["bandit", "accurate"] = "bandit"
    level: Literal[1, 2, 3] = 1
    port: Port = 8000
    wait_s: PositiveFloat = 1.0
    retries: NonNegativeInt = 0
    beta: Annotated[float, Range(ge=1.0, le=5.0)] | None = None
    ports: Annotated[tuple[int, ...], Range(ge=1)] = ()


@pytest.mark.parametrize(
    ("source", "value", "message"),
    [
        ("toml", '[gateway]\nselection = "best"', "gateway.selection: 'best' is not one of bandit, accurate (from "),
        ("toml", "[gateway]\nlevel = 4", "gateway.level: 4 is not one of 1, 2, 3 (from "),
        ("toml", "[gateway]\nport = 70000", "gateway.port: must be at most 65535, got 70000 (from "),
        ("toml", "[gateway]\nwait_s = 0", "gateway.wait_s: must be greater than 0, got 0.0 (from "),
        ("toml", "[gateway]\nbeta = 0.5", "gateway.beta: must be at least 1, got 0.5 (from "),
        ("toml", "[gateway]\nports = [5, 0]", "gateway.ports: must be at least 1, got 0 (from "),
        ("env", {"LETMESH_GATEWAY_RETRIES": "-1"},
         "gateway.retries: must be at least 0, got -1 (from environment variable LETMESH_GATEWAY_RETRIES)"),
        ("env", {"LETMESH_GATEWAY_SELECTION": "Bandit"}, "gateway.selection: 'Bandit' is not one of bandit, accurate"),
        ("flags", {"wait_s": -2.0}, "gateway.wait_s: must be greater than 0, got -2.0 (from flag --wait-s)"),
        ("flags", {"level": "2x"}, "gateway.level: expected an integer, got '2x' (from flag --level)"),
    ],
)
def test_a_value_outside_its_choices_or_range_is_named_with_key_and_source(
    tmp_path: Path, source: str, value: Any, message: str
) -> None:
    kwargs: dict[str, Any] = {"env": {}, "section": "gateway"}
    if source == "toml":
        kwargs["toml_path"] = write_toml(tmp_path, value)
    elif source == "env":
        kwargs["env"] = value
    else:
        kwargs["flags"] = value
    with pytest.raises(ConfigError) as info:
        load_config(Checked, **kwargs)
    assert str(info.value).startswith(message), str(info.value)
    assert info.value.key == message.split(":")[0]


def test_values_inside_their_choices_and_ranges_load(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[gateway]\nselection = "accurate"\nport = 0\nbeta = 5\nports = [1, 65535]\n')
    config = load_config(Checked, toml_path=path, env={"LETMESH_GATEWAY_LEVEL": "3", "LETMESH_GATEWAY_BETA": ""},
                         flags={"wait_s": "0.001", "retries": 0}, section="gateway")
    assert config == Checked(selection="accurate", level=3, port=0, wait_s=0.001, retries=0, beta=None, ports=(1, 65535))


def test_choices_and_ranges_that_cannot_be_checked_are_rejected() -> None:
    @dataclass(frozen=True)
    class RangeOnText:
        name: Annotated[str, Range(ge=1)] = "x"

    @dataclass(frozen=True)
    class MixedLiteral:
        mode: Literal["a", 1] = "a"

    for cls in (RangeOnText, MixedLiteral):
        with pytest.raises(TypeError):
            load_config(cls, env={})


@dataclass(frozen=True, slots=True)
class LinkConfig:
    controller: Address = "tcp://127.0.0.1:5555"
    advertise: OptionalAddress = ""


@pytest.mark.parametrize(("value", "problem"), [
    ("127.0.0.1:5555", "did you mean tcp://127.0.0.1:5555?"),
    ("http://127.0.0.1:5555", "expected tcp://HOST:PORT, ipc://PATH or inproc://NAME"),
    ("tcp://127.0.0.1", "with a port from 0 to 65535"),
    ("tcp://127.0.0.1:70000", "with a port from 0 to 65535"),
    ("tcp://127.0.0.1:\u00b2", "with a port from 0 to 65535"),
    ("tcp://:5555", "with a port from 0 to 65535"),
    ("ipc://", "needs a name after it"),
    ("", "expected a ZeroMQ address"),
])
def test_a_zeromq_address_without_scheme_host_or_port_is_refused_at_load(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(LinkConfig, env={}, flags={"controller": value})
    assert err.value.key == "controller" and problem in err.value.problem and "flag --controller" in str(err.value)


@pytest.mark.parametrize("value", ["tcp://10.0.0.2:5555", "tcp://*:5556", "tcp://127.0.0.1:*", "tcp://127.0.0.1:0", "tcp://[::1]:5555",
                                   "ipc:///tmp/letmesh.sock", "inproc://control", "tcp://h:1 curve=abc"])
def test_zeromq_addresses_of_every_transport_load(value: str) -> None:
    assert load_config(LinkConfig, env={}, flags={"controller": value, "advertise": value}).controller == value
    assert load_config(LinkConfig, env={}).advertise == ""  # an optional address may stay unset


def test_a_misspelt_environment_variable_under_a_roles_prefix_is_named_not_ignored() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(GatewayConfig, env={"LETMESH_GATEWAY_HTTP_PROT": "9000"}, section="gateway")
    assert str(err.value) == ("gateway.http_prot: unknown setting; did you mean LETMESH_GATEWAY_HTTP_PORT? "
                              "(from environment variable LETMESH_GATEWAY_HTTP_PROT)")
    # Other roles' variables and unprefixed ones are not this role's business.
    env = {"LETMESH_CONTROLLER_ANYTHING": "1", "LETMESH_HTTP_PROT": "1", "LETMESH_GATEWAY_HTTP_PORT": "9000"}
    assert load_config(GatewayConfig, env=env, section="gateway").http_port == 9000
    with pytest.raises(ConfigError, match="agent.id: unknown setting"):  # agent_id is LETMESH_AGENT_AGENT_ID
        load_config(GatewayConfig, env={"LETMESH_AGENT_ID": "x"}, section="agent")
