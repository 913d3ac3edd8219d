"""Post-call analysis: when a conversation ends, the agent's analysis plan runs through the LLM router (a summary,
structured data extracted against the agent's JSON Schema, a success evaluation against a rubric); the result is
stored on the conversation, billed as LLM usage and sent in the ``conversation.ended`` end-of-call report.

``service`` runs a plan (``AnalysisRunner``) and the post-call steps of a conversation (``PostCallAnalysis``), which
the AnalysisStateMachine (functions/analysis/) or, with no state machine configured, the process itself runs.
"""
