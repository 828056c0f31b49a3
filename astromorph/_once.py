"""A thread-safe cache whose values are made once per key, whichever threads ask at once."""
import threading
from collections import OrderedDict

__all__ = ["OnceCache"]


class OnceCache:
    """Values made once per key, whichever threads ask for them at once.

    The first thread to ask for a key makes its value while the others asking for that very
    key wait for it (those asking for other keys do not: no lock is held while a value is
    made, which may take minutes, e.g. a TensorRT engine); a value that fails to be made is
    made again by the next thread to ask. The cache keeps the ``size()`` most recently used
    values (all of them where ``size`` is None).
    """

    def __init__(self, size=None):
        self._size = size
        self._values = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # guards both dicts, never held while a value is made
        self._making = {}  # key -> lock held by the thread making its value

    def _get(self, key):
        """(True, value) of a cached key, marked most recently used, else (False, None);
        with the lock held."""
        if key in self._values:
            self._values.move_to_end(key)
            return True, self._values[key]
        return False, None

    def get(self, key, make):
        """The value cached under ``key``, made by ``make()`` where there is none."""
        with self._lock:
            found, value = self._get(key)
            if found:
                return value
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self._lock:
                found, value = self._get(key)  # made meanwhile by the thread waited for
                if found:
                    return value
            try:
                value = make()
            except BaseException:
                with self._lock:
                    self._making.pop(key, None)
                raise
            with self._lock:  # cached and no longer being made in one step: never made twice
                self._values[key] = value
                self._making.pop(key, None)
                if self._size is not None:
                    while len(self._values) > max(self._size(), 1):
                        self._values.popitem(last=False)
            return value

    def clear(self):
        """Forget every cached value."""
        with self._lock:
            self._values.clear()
