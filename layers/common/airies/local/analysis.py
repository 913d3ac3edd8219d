"""Local stack (``make run``): the post-call analysis in this process, instead of AnalysisStateMachine.

infra/env/local.json leaves ``AIRIES_ANALYSIS_STATE_MACHINE_ARN`` unset locally, so a conversation that ends asks the
starter registered here: it hands the conversation to a worker thread, which runs the same steps as the state
machine's tasks (``PostCallAnalysis.run``: analyse, or store the failure, then send ``conversation.ended``). The
call's end never waits for it. Offline (no LLM key) the offline responder answers every step.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from airies.analysis.service import PostCallAnalysis, build_post_call_analysis
from airies.conversations import post_call
from airies.local.server import LocalStack, on_startup

WORKERS = 2


class ThreadedPostCall:
    def __init__(self, runner: PostCallAnalysis, workers: int = WORKERS) -> None:
        self.runner = runner
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="local-analysis")
        self.pending: list[Future[str]] = []  # runs not finished yet (tests wait on them)

    def start(self, account_id: str, conversation_id: str) -> None:
        self.pending.append(self.pool.submit(self.runner.run, account_id, conversation_id))
        self.pending = [future for future in self.pending if not future.done()]


@on_startup
def start_analysis_runner(stack: LocalStack) -> None:
    if stack.settings.analysis_state_machine_arn:
        return  # pointed at a real state machine: let it run there
    post_call.register_in_process(ThreadedPostCall(build_post_call_analysis(stack.settings, stack.database)))
