"""astromorph._once.OnceCache: values made once per key, the most recently used kept."""
import pytest

from astromorph._once import OnceCache


def _counting(value):
    made = []

    def make():
        made.append(value)
        return value
    return make, made


def test_a_lowered_size_evicts_down_to_it_at_the_next_value():
    """The size is read at every new value (``astromorph._session.SESSION_CACHE_SIZE`` may be
    lowered while a process runs, to free sessions): the cache shrinks to it at once, not
    by one value per new one (keeping the old sessions, their weights and thread pools)."""
    size = [5]
    cache = OnceCache(size=lambda: size[0])
    for key in range(5):
        cache.get(key, lambda key=key: key)
    size[0] = 2
    cache.get("new", lambda: "new")
    make, made = _counting(4)
    assert cache.get(4, make) == 4 and made == []  # the most recently used before: kept
    for key in (3, 2, 1, 0):  # the others were evicted: made again
        make, made = _counting(key)
        cache.get(key, make)
        assert made == [key]


def test_a_size_of_zero_still_keeps_the_last_value():
    """A size below one keeps the value just made (a session asked for twice in a row is
    made once), rather than evicting it as it is stored."""
    cache = OnceCache(size=lambda: 0)
    make, made = _counting("v")
    assert cache.get("k", make) == "v"
    assert cache.get("k", make) == "v"
    assert made == ["v"]


def test_clear_forgets_every_value():
    cache = OnceCache()
    make, made = _counting("v")
    cache.get("k", make)
    cache.clear()
    cache.get("k", make)
    assert made == ["v", "v"]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_no_key_stays_marked_as_being_made(error):
    """Each key being made holds a lock until its value is stored or its making fails,
    even by an interrupt (Ctrl-C while a TensorRT engine builds): a long-running process
    (a service hashing and loading many model files) keeps no lock per key it ever made,
    and a failed key is made again by the next caller."""
    cache = OnceCache(size=lambda: 2)

    def fail():
        raise error("no")

    with pytest.raises(error):
        cache.get("bad", fail)
    for key in range(4):
        cache.get(key, lambda key=key: key)
    assert cache._making == {}
    assert cache.get("bad", lambda: "made") == "made"
    assert cache._making == {}
