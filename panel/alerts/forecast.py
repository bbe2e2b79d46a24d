"""When a storage will be full, from the trend of its use: a least-squares line through the samples."""


def slope(times: list[float], values: list[float]) -> float | None:
    """The least-squares slope of `values` over `times` (units of value per unit of time), or
    None with fewer than two distinct times."""
    n = len(times)
    if n < 2 or n != len(values):
        return None
    mean_t, mean_v = sum(times) / n, sum(values) / n
    var = sum((t - mean_t) ** 2 for t in times)
    if var == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values)) / var


def days_to_full(times: list[float], used: list[float], capacity: float, now_used: float | None = None,
                 min_points: int = 6) -> float | None:
    """Days until `used` reaches `capacity` at the fitted rate (times in epoch seconds), counted
    from `now_used` (default: the last sample); None when the use is not growing or there are
    fewer than `min_points` samples."""
    points = [(t, v) for t, v in zip(times, used) if v is not None]
    if len(points) < min_points or capacity <= 0:
        return None
    rate = slope([t for t, _ in points], [v for _, v in points])
    if rate is None or rate <= 0:
        return None
    left = capacity - (points[-1][1] if now_used is None else now_used)
    return max(0.0, left / rate / 86400)
