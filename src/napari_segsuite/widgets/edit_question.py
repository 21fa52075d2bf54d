"""The in-dock question asked before a result replaces hand edits: overwrite, new layer, or cancel.

It is not a modal dialog: the question appears in the dock with three
buttons, the viewer stays usable, and tests (or scripts) answer it by clicking
a button or calling :meth:`EditQuestion.answer`. Starting another run drops a
question still open.
"""

from __future__ import annotations

from collections.abc import Callable

from magicgui.widgets import Container, Label, PushButton

ANSWERS = ("overwrite", "new", "cancel")


class EditQuestion(Container):
    """A hidden row that asks what to do with hand-edited layers and calls back with the answer."""

    def __init__(self):
        super().__init__(labels=False)
        self.text = Label(value="")
        self.text.native.setWordWrap(True)
        self.overwrite_button = PushButton(text="Overwrite")
        self.new_button = PushButton(text="Write to a new layer")
        self.cancel_button = PushButton(text="Cancel")
        self.extend([self.text, Container(widgets=[self.overwrite_button, self.new_button, self.cancel_button],
                                          layout="horizontal", labels=False)])
        self.visible = False
        self._callback: Callable[[str], None] | None = None
        self.overwrite_button.changed.connect(lambda: self.answer("overwrite"))
        self.new_button.changed.connect(lambda: self.answer("new"))
        self.cancel_button.changed.connect(lambda: self.answer("cancel"))

    @property
    def open(self) -> bool:
        """Whether a question waits for its answer."""
        return self._callback is not None

    def ask(self, question: str, callback: Callable[[str], None]) -> None:
        """Show ``question``; ``callback(answer)`` runs once, with "overwrite", "new" or "cancel"."""
        self._callback = callback
        self.text.value = question
        self.visible = True

    def answer(self, choice: str) -> None:
        """Answer the open question (does nothing when none is open)."""
        if choice not in ANSWERS:
            raise ValueError(f"choice must be one of {ANSWERS}")
        callback, self._callback = self._callback, None
        self.visible = False
        if callback is not None:
            callback(choice)

    def drop(self) -> None:
        """Forget an open question without answering it."""
        self._callback = None
        self.visible = False
