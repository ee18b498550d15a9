"""The schema preview refuses migrations that would end its rolled-back transaction."""

from __future__ import annotations

import pytest

from sources.postgres.schema_preview import transaction_control_in

pytestmark = pytest.mark.unit


def test_transaction_control_detection_ignores_comments_strings_and_bodies() -> None:
    assert transaction_control_in("ALTER TABLE t ADD c int; COMMIT;") == ["COMMIT"]
    assert transaction_control_in("begin; alter table t add c int; end;") == ["BEGIN", "END"]
    assert transaction_control_in("START TRANSACTION;") == ["START TRANSACTION"]
    harmless = """
        -- COMMIT here is a comment
        /* ROLLBACK; */
        INSERT INTO t VALUES ('COMMIT; BEGIN');
        CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $fn$ BEGIN RETURN 1; END $fn$;
        DO $$ BEGIN PERFORM 1; END $$;
        SAVEPOINT s1; RELEASE SAVEPOINT s1;
    """
    assert transaction_control_in(harmless) == []
