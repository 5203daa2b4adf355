import pytest

from diffdef.prepare.table import FileSource, SubjectSpec, TableError, read_table


def test_tsv_sniffed_case_insensitive_and_patterns(tmp_path):
    table = tmp_path / "participants.txt"
    table.write_text("MRID\tAge\tSex\nb\t40\tfemale\na\t\t1\n")
    specs = read_table(table, "mrid", image=FileSource(folder=str(tmp_path), pattern="{id}_T1.nii.gz"),
                       age_column="AGE", sex_column="sex")
    assert [s.id for s in specs] == ["a", "b"]
    assert specs[0].age() is None and specs[1].age() == 40.0
    assert specs[0].sex() == "M" and specs[1].sex() == "F"
    assert specs[1].image == str(tmp_path / "b_T1.nii.gz")


def test_image_column_relative_to_table_and_errors(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("id,age,img\nx,30,scans/x.nii.gz\n")
    (spec,) = read_table(table, image=FileSource(column="img"))
    assert spec.image == str(tmp_path / "scans" / "x.nii.gz")
    with pytest.raises(TableError, match="no id column 'subject'"):
        read_table(table, "subject", image=FileSource(column="img"))
    table.write_text("id,age,img\nx,30,a\nx,31,b\n")
    with pytest.raises(TableError, match="appears twice"):
        read_table(table, image=FileSource(column="img"))


def test_sex_values():
    assert SubjectSpec("a", None, sex_raw="0").sex() == "F"
    assert SubjectSpec("a", None, sex_raw="").sex() is None
    with pytest.raises(ValueError):
        SubjectSpec("a", None, sex_raw="x").sex()
    assert SubjectSpec("a", None, age_raw="abc").age() is None
