"""Screenings and overdose-risk assessments: the Questionnaire and QuestionnaireResponse rules
with server-side scoring (``rules``), the instruments a JMS can present (``instruments``), and
the JMS use case that records one (``record``)."""
