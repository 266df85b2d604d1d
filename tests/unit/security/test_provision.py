"""Per-process identities scripts/up hands out (scripts/provision.py, scripts/grants.py)."""

from __future__ import annotations

import pytest

from scripts import grants, lib, provision
from shared import names
from shared.settings import ConfigError, load_settings
from shared.signing import pair_key

SECRETS = {k: f"secret-of-{k}" for k in provision.SECRET_GENERATORS}


@pytest.fixture
def envs(secrets_env):
    settings = load_settings(message_queue={"username": "phoenix95_x"})
    return provision.identity_envs(settings, SECRETS)


def test_each_process_signs_only_as_itself_and_holds_no_other_signer_s_key(envs):
    own_keys = {k: v for k, v in SECRETS.items() if k.startswith("PHOENIX95_SIGNING_KEY_")}
    own_keys[provision.OPERATOR_KEY_ENV] = SECRETS[provision.OPERATOR_KEY_ENV]
    for kind, env in envs.items():
        signer = provision.SIGNER_OF.get(kind)
        expected = SECRETS[provision.signer_key_env(signer)] if signer else ""
        assert env["PHOENIX__SECURITY__SIGNING_KEY"] == expected
        others = set(own_keys.values()) - {expected}
        assert not others & set(env.values()), f"{kind} holds another signer's own key"


def test_receivers_hold_the_pair_keys_of_the_callers_they_accept(envs):
    execute = envs["execute"]
    assert execute["PHOENIX__SECURITY__VERIFY_KEYS__RISK"] == pair_key(
        SECRETS[provision.signer_key_env("risk")], names.EXECUTE)
    assert "PHOENIX__SECURITY__VERIFY_KEYS__BRAIN" in execute  # close requests
    assert "PHOENIX__SECURITY__VERIFY_KEYS__TELEGRAM" in execute  # /close, /closeall
    assert not any(k.startswith("PHOENIX__SECURITY__VERIFY_KEYS__") for k in envs["notify"])
    assert set(k.rsplit("__", 1)[1] for k in envs["brain"] if "VERIFY_KEYS" in k) == \
        {"OPERATOR"}


def test_each_process_has_its_own_broker_and_redis_user(envs):
    users = {env.get("PHOENIX__MESSAGE_QUEUE__USERNAME") for env in envs.values()}
    assert "phoenix95_x_brain" in users and "phoenix95_x_dashboard" in users
    assert "PHOENIX__MESSAGE_QUEUE__USERNAME" not in envs["feed"]  # the feed uses no AMQP
    assert envs["feed"]["PHOENIX__REDIS_STREAMS__USERNAME"] == "phoenix95_x_feed"


def test_supervisord_programs_get_their_kind_s_environment(envs):
    specs = [lib.ProcSpec("brain", ("x",)), lib.ProcSpec("brain-2", ("x",)),
             lib.ProcSpec("telegram_worker", ("x",)), lib.ProcSpec("paper_exchange", ("x",))]
    out = {s.name: s.env for s in provision.with_identities(specs, envs)}
    assert out["brain-2"]["PHOENIX__MESSAGE_QUEUE__USERNAME"] == "phoenix95_x_brain"
    assert out["telegram_worker"]["PHOENIX__SECURITY__SIGNING_IDENTITY"] == "telegram"
    assert out["paper_exchange"] == {}


def test_the_dashboard_redis_user_reads_only():
    rules = grants.redis_acl_rules("dashboard", "pw")
    assert "+@all" not in rules and not any(r.startswith("%RW~") for r in rules)


def test_only_known_callers_may_have_verification_keys(secrets_env):
    with pytest.raises(ConfigError, match="unknown caller"):
        load_settings(security={"verify_keys": {"mallory": "k"}})
