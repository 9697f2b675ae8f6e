import pytest

from core.datafiles import DataModel, parse, read_json
from core.errors import InputError


class Example(DataModel):
    name: str
    values: list[float]


def test_parse_names_the_field_that_is_wrong():
    assert parse(Example, {"name": "a", "values": [1, 2.5]}, "x.json") == Example(name="a", values=[1.0, 2.5])
    with pytest.raises(InputError, match=r"^x\.json: values\[1\]: "):
        parse(Example, {"name": "a", "values": [1, "high"]}, "x.json")
    with pytest.raises(InputError, match="colour: Extra inputs are not permitted"):
        parse(Example, {"name": "a", "values": [], "colour": 1}, "x.json")


def test_read_json_errors_say_which_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_json(tmp_path / "missing.json", "plan")
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(InputError, match="not valid JSON"):
        read_json(tmp_path / "bad.json", "plan")
    (tmp_path / "ok.json").write_text('{"a": [1]}', encoding="utf-8")
    assert read_json(tmp_path / "ok.json", "plan") == {"a": [1]}
