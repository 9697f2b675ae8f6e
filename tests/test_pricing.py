import pytest

from core import config
from core.errors import InputError
from core.pricing import ModelPrice, Prices, load_prices, parse_prices


def test_cost_is_per_million_tokens_and_looks_up_spec_then_name():
    prices = parse_prices(
        '[models."gpt-4o-mini"]\ninput_per_million = 0.15\noutput_per_million = 0.6\n'
        '[models."openai:local"]\ninput_per_million = 2\noutput_per_million = 4\n',
        "p.toml",
    )
    assert prices.cost("openai:gpt-4o-mini", 1_000_000, 500_000) == pytest.approx(0.15 + 0.3)
    assert prices.cost("gpt-4o-mini", 2_000, 0) == pytest.approx(0.0003)
    assert prices.cost("openai:local", 1_000, 1_000) == pytest.approx(0.006)
    # Not listed, or a count unknown: no cost, never 0.
    assert prices.cost("hf:./model", 1_000, 1_000) is None
    assert prices.cost("openai:gpt-4o-mini", None, 10) is None
    assert Prices().cost("openai:gpt-4o-mini", 1, 1) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models", "not valid TOML"),
        ("[prices.x]\na = 1", "unknown section"),
        ('[models."m"]\ninput_per_million = 1', "needs exactly"),
        ('[models."m"]\ninput_per_million = -1\noutput_per_million = 1', "non-negative"),
        ('[models."m"]\ninput_per_million = "cheap"\noutput_per_million = 1', "non-negative"),
    ],
)
def test_bad_price_files_say_what_is_wrong(text, message):
    with pytest.raises(InputError, match=message):
        parse_prices(text, "p.toml")


def test_load_prices_reads_the_configured_file(tmp_path, monkeypatch):
    monkeypatch.setenv(config.ENV_PRICES, str(tmp_path / "prices.toml"))
    assert load_prices().models == {}  # no file: no prices, no error
    (tmp_path / "prices.toml").write_text("[models.m]\ninput_per_million = 1\noutput_per_million = 3\n")
    prices = load_prices()
    assert prices.models == {"m": ModelPrice(1, 3)} and prices.source == str(tmp_path / "prices.toml")


def test_the_example_price_file_parses():
    example = config.REPO_ROOT / "prices.example.toml"
    assert parse_prices(example.read_text(), str(example)).price("openai:gpt-4o-mini") is not None
