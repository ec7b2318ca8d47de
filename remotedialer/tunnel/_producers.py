"""
A pull producer driven as a push producer.

A consumer that only knows push producers (a tunnel stream) still has to
accept pull producers (C{registerProducer(p, streaming=False)}, e.g.
twisted.web's static files).  This adapter calls the pull producer's
C{resumeProducing} once per cooperator turn, and pausing the adapter
pauses that loop -- the job Twisted does with a private helper of its own,
rebuilt here on the public L{twisted.internet.task.cooperate}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from twisted.internet.interfaces import IConsumer, IPullProducer, IPushProducer
from twisted.internet.task import CooperativeTask, TaskFinished, cooperate
from twisted.logger import Logger
from zope.interface import implementer

_log = Logger()


@implementer(IPushProducer)
class PullToPush:
    """
    Drives C{producer} (an IPullProducer) into C{consumer} until stopped.
    The consumer calls L{start} when the producer is registered and L{stop}
    when it is unregistered; if the producer raises, it is unregistered.

    @param cooperate: the scheduler (default: this module's C{cooperate},
        L{twisted.internet.task.cooperate}), e.g. a test L{Cooperator}'s.
    """

    def __init__(
        self,
        producer: IPullProducer,
        consumer: IConsumer,
        cooperate: Callable[[Iterator[None]], CooperativeTask[Iterator[None]]] | None = None,
    ) -> None:
        self._producer = producer
        self._consumer = consumer
        self._cooperate = cooperate
        self._task: CooperativeTask[Iterator[None]] | None = None
        self._paused = False

    def _pull(self) -> Iterator[None]:
        while True:
            try:
                self._producer.resumeProducing()
            except Exception:
                _log.failure("pull producer {producer} failed; unregistering it",
                             producer=self._producer)
                self._task = None
                self._consumer.unregisterProducer()
                return
            yield None

    def start(self) -> None:
        self._paused = False
        schedule = self._cooperate if self._cooperate is not None else cooperate
        self._task = schedule(self._pull())

    def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            try:
                task.stop()
            except TaskFinished:
                pass

    # IPushProducer

    def pauseProducing(self) -> None:
        if self._task is not None and not self._paused:
            self._paused = True
            self._task.pause()

    def resumeProducing(self) -> None:
        if self._task is not None and self._paused:
            self._paused = False
            self._task.resume()

    def stopProducing(self) -> None:
        self.stop()
        self._producer.stopProducing()
