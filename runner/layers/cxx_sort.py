"""libstdc++'s std::sort, reproduced where the order it leaves ties in decides a result (the
SSD fork's hard negative mining sorts by loss with an unstable sort)."""
from __future__ import annotations

SORT_THRESHOLD = 16  # libstdc++'s _S_threshold: std::sort leaves runs this short to insertion sort


def std_sort_order(keys) -> list[int]:
    """The positions of `keys` in the order libstdc++'s std::sort with SortScorePairDescend
    (greater key first) leaves (key, position) pairs: introsort with median-of-three
    pivots, heap sort past the depth limit, then insertion sort. Ties come out as it
    leaves them (unlike a stable sort)."""
    items = [(float(k), i) for i, k in enumerate(keys)]
    if items:
        _introsort(items, 0, len(items), 2 * (len(items).bit_length() - 1))
        _final_insertion_sort(items, 0, len(items))
    return [i for _, i in items]


def _introsort(a: list, first: int, last: int, depth: int) -> None:
    """std::__introsort_loop."""
    while last - first > SORT_THRESHOLD:
        if depth == 0:
            _heap_sort(a, first, last)
            return
        depth -= 1
        mid = first + (last - first) // 2
        x, y, z = first + 1, mid, last - 1  # std::__move_median_to_first
        if a[x][0] > a[y][0]:
            median = y if a[y][0] > a[z][0] else z if a[x][0] > a[z][0] else x
        else:
            median = x if a[x][0] > a[z][0] else z if a[y][0] > a[z][0] else y
        a[first], a[median] = a[median], a[first]
        lo, hi, pivot = first + 1, last, a[first][0]  # std::__unguarded_partition
        while True:
            while a[lo][0] > pivot:
                lo += 1
            hi -= 1
            while pivot > a[hi][0]:
                hi -= 1
            if not lo < hi:
                break
            a[lo], a[hi] = a[hi], a[lo]
            lo += 1
        _introsort(a, lo, last, depth)
        last = lo


def _heap_sort(a: list, first: int, last: int) -> None:
    """std::__partial_sort(first, last, last): std::__make_heap then std::__sort_heap."""
    length = last - first
    if length >= 2:
        for parent in range((length - 2) // 2, -1, -1):
            _adjust_heap(a, first, parent, length, a[first + parent])
    while last - first > 1:
        last -= 1
        value = a[last]
        a[last] = a[first]
        _adjust_heap(a, first, 0, last - first, value)


def _adjust_heap(a: list, first: int, hole: int, length: int, value) -> None:
    """std::__adjust_heap then std::__push_heap, on a heap of the `greater` ordering."""
    top = child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if a[first + child][0] > a[first + child - 1][0]:
            child -= 1
        a[first + hole] = a[first + child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        a[first + hole] = a[first + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and a[first + parent][0] > value[0]:
        a[first + hole] = a[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[first + hole] = value


def _final_insertion_sort(a: list, first: int, last: int) -> None:
    """std::__final_insertion_sort: guarded insertion over the first 16, unguarded after."""
    for i in range(first + 1, last):
        value = a[i]
        if i < first + SORT_THRESHOLD and value[0] > a[first][0]:
            a[first + 1:i + 1] = a[first:i]
            a[first] = value
            continue
        j = i
        while value[0] > a[j - 1][0]:
            a[j] = a[j - 1]
            j -= 1
        a[j] = value
