"""Draws images/wiring.png, the Raspberry Pi wiring of README's guide: python images/wiring.py"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

BOXES = {
    "car": (0.2, 4.4, 2.6, 1.2, "Car\nOBD-II socket\n(under the dashboard)", "#f4d6a0"),
    "elm": (3.6, 4.4, 2.4, 1.2, "ELM327 / STN adapter\n(USB or Bluetooth)", "#c9e3f6"),
    "pi": (7.0, 2.6, 3.0, 2.2, "Raspberry Pi\nECCM\n/dev/obd  /dev/gnss", "#c8efc4"),
    "gnss": (3.6, 1.0, 2.4, 1.2, "GNSS receiver\n(USB, or UART GPIO 15)", "#c9e3f6"),
    "antenna": (0.2, 1.0, 2.6, 1.2, "GNSS antenna\n(view of the sky)", "#eeeeee"),
    "power": (7.0, 0.2, 3.0, 1.1, "12 V → 5 V 3 A converter\n(switched or permanent)",
              "#f6c9c9"),
    "net": (7.0, 5.2, 3.0, 1.0, "Wi-Fi / 4G hotspot\n(S3 upload, socket server)", "#eeeeee"),
}
LINKS = [("car", "elm", "OBD-II (CAN, K-line)"), ("elm", "pi", "USB serial / RFCOMM"),
         ("antenna", "gnss", "coax"), ("gnss", "pi", "USB serial (NMEA)"),
         ("power", "pi", "5 V"), ("pi", "net", "TCP/IP")]


def centre(name):
    x, y, w, h = BOXES[name][:4]
    return x + w / 2, y + h / 2


def main() -> None:
    fig, ax = plt.subplots(figsize=(10.5, 6.6), dpi=100)
    for x, y, w, h, text, colour in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05",
                                    facecolor=colour, edgecolor="0.3"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=10)
    for a, b, label in LINKS:
        (x1, y1), (x2, y2) = centre(a), centre(b)
        ax.add_patch(FancyArrowPatch((x1, y1), (x2, y2), arrowstyle="-", linewidth=2,
                                     color="0.35", shrinkA=40, shrinkB=40, zorder=0))
        ax.text((x1 + x2) / 2, (y1 + y2) / 2 + 0.15, label, ha="center", fontsize=9,
                color="0.2", backgroundcolor="white")
    ax.set_xlim(0, 10.3)
    ax.set_ylim(0, 6.4)
    ax.axis("off")
    ax.set_title("ECCM wiring", fontsize=14)
    fig.tight_layout()
    fig.savefig(Path(__file__).with_name("wiring.png"))


if __name__ == "__main__":
    main()
