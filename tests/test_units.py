import pytest

from splitdnn.units import format_rate, parse_duration, parse_percent, parse_rate


@pytest.mark.parametrize(
    "text,seconds", [("2.5ms", 0.0025), ("250ms", 0.25), ("1s", 1.0), ("10us", 1e-5), ("2m", 120.0)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text,bps", [("4mbit", 500_000.0), ("100kbit", 12_500.0), ("1gbit", 125e6), ("3mbps", 3e6)])
def test_rates_are_bytes_per_second(text, bps):
    assert parse_rate(text) == pytest.approx(bps)


@pytest.mark.parametrize("bad", ["2.5", "ms", "-1ms", "1 h", "fast"])
def test_bad_durations_name_the_value(bad):
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(bad)


def test_percent_and_rate_round_trip():
    assert parse_percent("2.5%") == pytest.approx(0.025)
    with pytest.raises(ValueError):
        parse_percent("150%")
    assert parse_rate(format_rate(parse_rate("4mbit"))) == pytest.approx(500_000.0)
