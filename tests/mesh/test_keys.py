"""The keyring: issuing, finding, listing and revoking keys, and the plaintext guard."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from mesh import keys


@pytest.fixture
def ring(tmp_path: Path) -> Path:
    root = tmp_path / "keys"
    keys.init_keyring(root)
    return root


def test_a_host_finds_its_key_pair_in_the_keyring_and_in_the_copied_folder(ring: Path, tmp_path: Path) -> None:
    host = keys.add_peer(ring, "agent", "e1")
    copied = tmp_path / "on-e1"
    shutil.copytree(host, copied)
    from_ring = keys.client_keys(ring, "agent", "e1")
    from_host = keys.client_keys(copied, "agent", "e1")
    assert from_ring.public_key == from_host.public_key and from_ring.secret_key == from_host.secret_key
    assert from_host.server_key == keys.Keyring(ring).server_keys().public_key
    assert stat.S_IMODE(keys.own_secret_file(copied, "agent", "e1").stat().st_mode) == 0o600


def test_the_controller_knows_each_authorised_key_by_its_role_and_name(ring: Path) -> None:
    keys.add_peer(ring, "agent", "e1")
    keys.add_peer(ring, "gateway", "g1")
    ring_view = keys.Keyring(ring)
    agent = keys.client_keys(ring, "agent", "e1")
    assert ring_view.authorized.name_of(agent.public_key.decode()) == "agent:e1"
    assert ring_view.authorized.of_role("gateway") == {"g1": keys.client_keys(ring, "gateway", "g1").public_key.decode()}
    assert [(r, n) for r, n, _ in keys.list_peers(ring)] == [("agent", "e1"), ("gateway", "g1"), ("operator", "local")]
    assert keys.operator_keys(ring).public_key == keys.client_keys(ring, "operator", "local").public_key


def test_a_revoked_name_is_refused_after_the_next_refresh(ring: Path) -> None:
    keys.add_peer(ring, "agent", "e1")
    view = keys.Keyring(ring)
    assert view.authorized.allowed("agent:e1")
    version = view.version
    assert keys.revoke_peer(ring, "e1") == "agent"
    assert view.refresh() and view.version > version
    assert not view.authorized.allowed("agent:e1")
    assert not (ring / "hosts" / "agent-e1").exists()
    with pytest.raises(keys.KeysError):
        keys.revoke_peer(ring, "e1")


def test_names_are_unique_within_a_role_and_well_formed(ring: Path) -> None:
    keys.add_peer(ring, "agent", "e1")
    with pytest.raises(keys.KeysError, match="already authorised"):
        keys.add_peer(ring, "agent", "e1")
    keys.add_peer(ring, "gateway", "e1")  # another role: another name (gateway:e1)
    with pytest.raises(keys.KeysError, match="say which"):
        keys.revoke_peer(ring, "e1")
    assert keys.revoke_peer(ring, "gateway:e1") == "gateway"
    for bad in ("", "../x", "a b", ".hidden"):
        with pytest.raises(keys.KeysError):
            keys.add_peer(ring, "agent", bad)
    with pytest.raises(keys.KeysError):
        keys.add_peer(ring, "root", "x")
    with pytest.raises(keys.KeysError, match="already holds"):
        keys.init_keyring(ring)


def test_a_role_without_its_key_pair_is_told_how_to_get_one(ring: Path) -> None:
    with pytest.raises(keys.KeysError, match="letmesh keys add agent e9"):
        keys.client_keys(ring, "agent", "e9")
    with pytest.raises(keys.KeysError, match="letmesh keys init"):
        keys.Keyring(ring / "nothing")


def test_plaintext_beyond_this_host_needs_keys_or_insecure() -> None:
    keys.refuse_plaintext(["tcp://127.0.0.1:5555", "ipc:///tmp/x", "tcp://localhost:1"], "", False, "agent")
    with pytest.raises(keys.KeysError, match="--insecure"):
        keys.refuse_plaintext(["tcp://10.0.0.2:5555"], "", False, "agent")
    with pytest.raises(keys.KeysError):
        keys.refuse_plaintext(["tcp://0.0.0.0:5555"], "", False, "controller")
    keys.refuse_plaintext(["tcp://10.0.0.2:5555"], "", True, "agent")
    keys.refuse_plaintext(["tcp://10.0.0.2:5555"], "/some/keys", False, "agent")


def test_an_address_carries_its_server_key_and_gives_it_back() -> None:
    key = "z:>*fvbitN)APHe9/a]Ld%tY{ToCO$lZvcaE#Tau"
    assert keys.split_server_key(keys.with_server_key("tcp://h:1", key)) == ("tcp://h:1", key.encode())
    assert keys.split_server_key("tcp://h:1") == ("tcp://h:1", None)
    assert keys.with_server_key("tcp://h:1", "") == "tcp://h:1"


def test_a_starting_agent_clears_the_worker_secrets_a_killed_one_left(tmp_path) -> None:
    folder = tmp_path / "credentials"
    folder.mkdir()
    for name in ("worker-local.g1001.w0.key_secret", "worker-local.g1002.w1.key_secret", "agent.key_secret"):
        (folder / name).write_text("secret")
    assert keys.clear_worker_credentials(folder) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["agent.key_secret"]
    assert keys.clear_worker_credentials(tmp_path / "absent") == 0


@pytest.mark.parametrize("name", ["../../data:v", "agent:../../escaped", "agent:..", "agent:a/b", "nobody:x"])
def test_revoking_a_name_that_is_not_a_peer_name_touches_nothing(tmp_path: Path, name: str) -> None:
    root = tmp_path / "ring" / "keys"
    keys.init_keyring(root)
    keys.add_peer(root, "agent", "e1")
    # What such names would reach: root/authorized/../../data/v.key and root/hosts/../../data-v/.
    for folder in (root.parent / "data", root.parent / "data-v", root / "authorized" / "agent" / ".."):
        folder.mkdir(exist_ok=True)
    (root.parent / "data" / "v.key").write_text("not the keyring's")
    (root.parent / "data-v" / "notes").write_text("not the keyring's")
    (root.parent / "escaped.key").write_text("not the keyring's")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(keys.KeysError):
        keys.revoke_peer(root, name)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_key_copied_in_while_a_refresh_reads_the_folder_is_let_in_by_a_later_refresh(ring: Path) -> None:
    view = keys.Keyring(ring)
    keys.add_peer(ring, "agent", "elsewhere")  # a key pair; its public half copied in below by hand
    public = (ring / "authorized" / "agent" / "elsewhere.key").read_text()
    keys.revoke_peer(ring, "agent:elsewhere")
    view.refresh()
    target = ring / "authorized" / "agent" / "b.key"
    with target.open("w") as copying:  # created, not written yet: what `cp` leaves for a moment
        view.refresh()
        assert not view.authorized.allowed("agent:b")
        copying.write(public)
    view.refresh()  # the folder's time did not change when the copy ended
    assert view.authorized.allowed("agent:b")


def test_each_launch_of_a_worker_has_a_secret_of_its_own(ring: Path, tmp_path: Path) -> None:
    """The exit of a process that a same-named worker replaced is seen late: dropping its secret
    must leave the new process's; and ids that read alike once sanitised do not share one."""
    server = ring / "controller.key"
    folder = tmp_path / "credentials"
    _, old = keys.new_worker_credential(folder, "a1.w0", server)
    _, new = keys.new_worker_credential(folder, "a1.w0", server)
    _, lookalike = keys.new_worker_credential(folder, "x_1", server)
    _, other = keys.new_worker_credential(folder, "x:1", server)
    keys.drop_worker_credential(old)
    assert new.secret_file.is_file() and lookalike.secret_file != other.secret_file
    assert keys.clear_worker_credentials(folder) == 3
