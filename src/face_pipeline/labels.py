"""Class labels are folder names; they sort as numbers where they are numbers."""


def natural_key(label: str) -> tuple:
    """Sort key for class labels: '2' before '10', names after numbers."""
    return (0, int(label), "") if label.isdigit() else (1, 0, label)
