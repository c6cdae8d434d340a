"""
What two okws processes share: the channels, their message vocabularies, and the one HTTP
framing both the dispatcher and the services use.

    - L{channel}: a C{SOCK_SEQPACKET} message channel (JSON header, payload, file descriptors);
    - L{control}: launcher <-> every child; L{handoff}: dispatcher <-> service instances;
      L{logchannel} and L{logsender}: every process -> the log daemon;
      L{templatechannel}: services and dispatcher <-> the template publisher;
      L{counts}: the request counts instances report to the dispatcher;
    - L{httpframe}: the strict HTTP/1.1 reader both sides frame requests with;
      L{routing}: which service owns a request; L{errorpage}: answers okws writes itself;
    - L{transport}: the socket transport that can hand a connection on without shutting it down.

Nothing is imported here: each process loads only the protocols it speaks.  Modules here never
import a process subpackage.
"""
