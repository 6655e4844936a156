"""One PNG of a drive: main engine values over time and the track coloured by speed."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Tuple

from eccm.tools.trip import Trip, format_distance, format_duration, summarize

PANELS = [("SPEED", "Speed", "km/h"), ("RPM", "Engine speed", "rpm"),
          ("THROTTLE_POS", "Throttle", "%"), ("COOLANT_TEMP", "Coolant", "°C")]


def plot(trip: Trip, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")  # headless: a Pi in a car has no screen
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    panels: List[Tuple[str, str, str]] = [p for p in PANELS if any(
        v is not None for v in trip.series(p[0]))]
    if not panels:  # a car without these: its first numeric columns
        panels = [(n, n, trip.units.get(n, "")) for n in trip.columns[1:]
                  if any(v is not None for v in trip.series(n))][:4]
    track = trip.has_gnss
    fig = plt.figure(figsize=(14 if track else 9, 8), dpi=100)
    grid = fig.add_gridspec(max(1, len(panels)), 2 if track else 1,
                            width_ratios=[3, 2] if track else [1])
    first = None
    for i, (name, title, unit) in enumerate(panels):
        ax = fig.add_subplot(grid[i, 0], sharex=first)
        first = first or ax
        ax.plot(trip.times, [v if v is not None else float("nan")
                             for v in trip.series(name)], linewidth=1.2)
        ax.set_ylabel(f"{title} ({unit})" if unit else title)
        ax.grid(True, alpha=0.3)
        if i < len(panels) - 1:
            ax.tick_params(labelbottom=False)
    if first is not None:
        first.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        fig.axes[-1].set_xlabel("Time (UTC)")
    if track:
        ax = fig.add_subplot(grid[:, 1])
        points = trip.fixes()
        speeds = trip.series("SPEED") or trip.series("GNSS_SPEED")
        colour = [speeds[r] if speeds and speeds[r] is not None else 0 for r, _, _ in points]
        ax.plot([p[2] for p in points], [p[1] for p in points], color="0.8", linewidth=1)
        dots = ax.scatter([p[2] for p in points], [p[1] for p in points], c=colour, s=8,
                          cmap="viridis")
        fig.colorbar(dots, ax=ax, label="Speed (km/h)" if trip.series("SPEED") else
                     "Speed (m/s)")
        ax.set_xlabel("Longitude (°)")
        ax.set_ylabel("Latitude (°)")
        ax.set_aspect(1 / max(0.1, math.cos(math.radians(points[0][1]))))
        ax.ticklabel_format(useOffset=False)
        ax.set_title("Track")
        ax.grid(True, alpha=0.3)
    s = summarize(trip)
    distance = s["distance_gnss_km"] if s["distance_gnss_km"] is not None else \
        s["distance_speed_km"]
    fig.suptitle(f"{trip.path.name}: {s['start'][:16].replace('T', ' ')} UTC, "
                 f"{format_duration(s['duration_s'])}"
                 + (f", {format_distance(distance)}" if distance is not None else "")
                 + (f", max {s['max_speed_kmh']:.0f} km/h" if s["max_speed_kmh"] is not None
                    else ""), fontsize=13)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
