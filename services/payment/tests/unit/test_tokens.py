"""The api process's memory of SNAP access tokens: a token is known until its expiry, not after."""

from datetime import UTC, datetime, timedelta

from payment_service.service_layer.tokens import TokenCache

NOW = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)


def test_a_token_is_known_until_it_expires() -> None:
    cache = TokenCache()
    cache.put("h1", "bank-a", NOW + timedelta(seconds=900), NOW)
    assert cache.get("h1", NOW) == "bank-a"
    assert cache.get("h1", NOW + timedelta(seconds=899)) == "bank-a"
    assert cache.get("h1", NOW + timedelta(seconds=900)) is None  # expired: asked of the database again
    assert cache.get("h1", NOW) is None  # and forgotten
    assert cache.get("unknown", NOW) is None


def test_a_full_cache_drops_expired_tokens_first_then_everything() -> None:
    cache = TokenCache(size=2)
    cache.put("old", "bank-a", NOW + timedelta(seconds=1), NOW)
    cache.put("live", "bank-b", NOW + timedelta(seconds=900), NOW)
    later = NOW + timedelta(seconds=10)
    cache.put("new", "bank-c", later + timedelta(seconds=900), later)
    assert (cache.get("old", later), cache.get("live", later), cache.get("new", later)) == (None, "bank-b", "bank-c")
    cache.put("newest", "bank-a", later + timedelta(seconds=900), later)  # nothing expired: start over
    assert (cache.get("live", later), cache.get("new", later), cache.get("newest", later)) == (None, None, "bank-a")
