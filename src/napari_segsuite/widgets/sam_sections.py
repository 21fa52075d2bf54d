"""What every section of the SAM dock shares.

A section is a magicgui container (full-width rows; labelled fields go in
:func:`~napari_segsuite.widgets.scaffold.form` columns, which line up with the dock's) with a :attr:`SamSection.title` that the dock shows as
a collapsible group (:meth:`~napari_segsuite.widgets.sam_prompt.SamPromptWidget.add_section`).
It reaches the dock's shared state through :attr:`SamSection.dock`: the viewer, the chosen
image, the SAM session (``dock.session_job``), the job panel (``dock.job_panel``: start a
job, report an error) and the preview controller (``dock.preview``). A section may offer
key bindings (:meth:`SamSection.key_bindings`) and hear about a new image
(:meth:`SamSection.image_changed`) or the dock closing (:meth:`SamSection.shutdown`).

Adding a section to the dock::

    class MySection(SamSection):
        title = "My tool"
        collapsed = True

        def __init__(self, dock):
            super().__init__(dock)
            self.extend([...])

    dock.add_section(MySection(dock))
"""

from __future__ import annotations

from collections.abc import Callable

from magicgui.widgets import Container


class SamSection(Container):
    """Base of the SAM dock's sections.

    Parameters
    ----------
    dock : SamPromptWidget
    """

    #: The group header.
    title = ""
    #: Start collapsed (rarely used) or open.
    collapsed = False

    def __init__(self, dock):
        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        self.dock = dock
        self.viewer = dock.viewer

    def key_bindings(self) -> dict[str, Callable]:
        """``{key: callback(viewer)}`` bound on the viewer while the dock is open."""
        return {}

    def image_changed(self, image) -> None:
        """The dock's image changed (or was set the first time)."""

    def shutdown(self) -> None:
        """The dock is closing: stop threads, release resources. Idempotent."""
