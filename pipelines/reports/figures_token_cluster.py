"""AiluRus' figure, for the settings with a clustering fraction (its declaration in
``pipelines/methods/token_cluster.py`` names :data:`FIGURES`):

* ``accuracy_vs_cluster_fraction``: mIoU against the fraction of tokens kept as anchors.
"""
from __future__ import annotations

from pipelines.reports.figure_base import Skip, errorbars

#: the clustering threshold that the AiluRus figure sweeps: the fraction of tokens kept as
#: cluster anchors, under the alias ``pipelines/models/token_cluster.py`` declares in its AXES
CLUSTER_AXIS = "anchors"


def fig_accuracy_vs_cluster_fraction(a, plt):
    settings = a.settings
    skip = Skip(f"no runs with a {CLUSTER_AXIS} setting (AiluRus clustering fraction) yet")
    if CLUSTER_AXIS not in settings or settings.empty:
        return skip
    settings = settings.dropna(subset=[CLUSTER_AXIS, "miou"])
    if settings.empty:
        return skip
    settings = settings.assign(**{CLUSTER_AXIS: settings[CLUSTER_AXIS].astype(float)})
    fig, ax = plt.subplots(figsize=(5.2, 3.6), layout="constrained")
    for name in a.ordered_series(settings["series"]):
        color, marker = a.style(name)
        pts = settings[settings["series"] == name].sort_values([CLUSTER_AXIS, "setting"])
        ax.plot(pts[CLUSTER_AXIS], pts["miou"], color=color, lw=1.0, alpha=0.7)
        errorbars(ax, pts, CLUSTER_AXIS, "miou", color, marker,
                   label=f"{name} (mean, 95 % CI)")
    ax.set_xlabel(f"cluster anchors as a fraction of tokens ({CLUSTER_AXIS})")
    ax.set_ylabel("mIoU (%), mean over seeds")
    ax.set_title("Accuracy vs clustering fraction")
    ax.legend(loc="lower right")
    return fig


#: name -> drawing function, drawn by ``python -m pipelines figures``
FIGURES = {"accuracy_vs_cluster_fraction": fig_accuracy_vs_cluster_fraction}
