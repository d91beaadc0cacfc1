import pytest

from reform_engine.backups import BackupConfig, list_backups, move_aside, put_in_place, rotate, snapshot_path


def test_backup_config_refuses_bad_values_and_reads_the_environment(tmp_path):
    with pytest.raises(ValueError, match="BackupConfig.keep=0; give an integer >= 1"):
        BackupConfig(keep=0)
    with pytest.raises(ValueError, match="every=-1; give an integer >= 0 \\(0 turns automatic snapshots off\\)"):
        BackupConfig(every=-1)
    with pytest.raises(ValueError, match="must be integers"):
        BackupConfig.from_env({"REFORM_BACKUP_EVERY": "often"})
    config = BackupConfig.from_env({"REFORM_BACKUP_EVERY": "7", "REFORM_BACKUP_KEEP": "2", "REFORM_BACKUP_DIR": str(tmp_path)})
    assert (config.every, config.keep, config.folder(tmp_path / "x" / "reform.duckdb")) == (7, 2, tmp_path)
    assert BackupConfig.from_env({}).folder(tmp_path / "reform.duckdb") == tmp_path / "backups"


def test_snapshots_are_listed_newest_first_and_only_the_newest_are_kept(tmp_path):
    db, config = tmp_path / "reform.duckdb", BackupConfig(keep=2)
    made = []
    for reason in ("start", "auto", "manual"):
        path = snapshot_path(db, config, reason)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(reason.encode())
        made.append(path)
    (config.folder(db) / "other-20260101T000000.000000Z-auto.duckdb").write_bytes(b"another database's")
    (config.folder(db) / "notes.txt").write_text("not a snapshot")
    assert list_backups(db, config) == made[::-1]
    assert rotate(db, config) == [made[0]]
    assert list_backups(db, config) == [made[2], made[1]] and not made[0].exists()
    assert sorted(p.name for p in config.folder(db).iterdir() if not p.name.startswith("reform-")) == [
        "notes.txt", "other-20260101T000000.000000Z-auto.duckdb"]


def test_a_replaced_or_given_up_database_is_kept_aside_with_its_log(tmp_path):
    db = tmp_path / "reform.duckdb"
    db.write_bytes(b"current")
    db.with_name("reform.duckdb.wal").write_bytes(b"its log")
    new = tmp_path / "new.tmp"
    new.write_bytes(b"restored")
    aside = put_in_place(new, db, "replaced")
    assert db.read_bytes() == b"restored" and aside.read_bytes() == b"current"
    assert aside.with_name(aside.name + ".wal").read_bytes() == b"its log" and not db.with_name("reform.duckdb.wal").exists()
    broken = move_aside(db, "broken")
    assert broken.name.startswith("reform.duckdb.broken-") and broken.read_bytes() == b"restored" and not db.exists()
    assert move_aside(db, "broken") is None
