"""Secret rotation: the staged secrets that let old and new credentials overlap during a roll."""
from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from kit import db, rotation
from kit.errors import KitError

BEFORE = {"db_password": "old-db", "redis_password": "old-redis", "admin_password": "a", "loadtest_password": "l"}


def test_first_rotation_moves_moodle_to_a_login_role_and_keeps_the_old_credentials():
    staged = rotation.plan_rotation(BEFORE, db=True, redis=True)
    assert staged["db_user"] == "moodle_a" and staged["db_user_previous"] == "moodle"
    assert staged["db_password_previous"] == "old-db" and staged["db_password"] not in ("old-db", "")
    assert staged["redis_password_previous"] == "old-redis" and staged["redis_password"] != "old-redis"
    assert staged["admin_password"] == "a"


def test_login_roles_alternate_so_the_old_one_stays_valid_during_the_roll():
    first = {k: v for k, v in rotation.plan_rotation(BEFORE, db=True, redis=False).items()
             if not k.endswith("_previous")}
    second = rotation.plan_rotation(first, db=True, redis=False)
    assert (second["db_user_previous"], second["db_user"]) == ("moodle_a", "moodle_b")
    third = rotation.plan_rotation({k: v for k, v in second.items() if not k.endswith("_previous")},
                                   db=True, redis=False)
    assert third["db_user"] == "moodle_a"


def test_an_interrupted_rotation_is_finished_not_started_again():
    staged = rotation.plan_rotation(BEFORE, db=True, redis=True)
    assert rotation.plan_rotation(staged, db=True, redis=True) == staged


def test_only_the_chosen_service_rotates():
    staged = rotation.plan_rotation(BEFORE, db=False, redis=True)
    assert "db_password_previous" not in staged and staged["db_password"] == "old-db"
    assert "redis_password_previous" in staged


def test_scram_verifier_matches_what_a_client_proves():
    """Recompute the client side of SCRAM-SHA-256 (RFC 7677) and check it against the verifier."""
    verifier = db.scram_verifier("pencil", salt=b"0123456789abcdef")
    mech, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    assert mech == "SCRAM-SHA-256" and int(iterations) == 4096
    assert base64.b64decode(salt) == b"0123456789abcdef"
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    assert hashlib.sha256(client_key).digest() == stored_key
    assert hmac.new(salted, b"Server Key", "sha256").digest() == server_key
    assert db.scram_verifier("pencil") != db.scram_verifier("pencil")  # a fresh salt each time


def test_unknown_login_role_is_refused_before_any_sql():
    with pytest.raises(KitError, match="unexpected database login role"):
        rotation.check_login_role("postgres")
    rotation.check_login_role("moodle_b")
