"""The ``modal`` provider, over the Modal SDK (imported lazily)."""

from qai_jobs.providers.modal.provider import ModalProvider

__all__ = ["ModalProvider"]
