//! The names of the AWS-owned Session documents (§1.2): one constant each, for the client's
//! modes and the simulator's service alike. Names only: what a document starts is the agent's
//! handshake's to say.

/// An SSH byte stream to `portNumber` (proxy mode's default).
pub const SSH: &str = "AWS-StartSSHSession";
/// Port forwarding to `portNumber` on the target itself.
pub const PORT_FORWARDING: &str = "AWS-StartPortForwardingSession";
/// Port forwarding to `host`:`portNumber` behind the target.
pub const PORT_FORWARDING_TO_REMOTE_HOST: &str = "AWS-StartPortForwardingSessionToRemoteHost";
/// The shell (the account's Session Manager preferences).
pub const SHELL: &str = "SSM-SessionManagerRunShell";
/// One command on a remote terminal.
pub const INTERACTIVE_COMMAND: &str = "AWS-StartInteractiveCommand";
/// One command on pipes, with separate stderr and an exit code.
pub const NON_INTERACTIVE_COMMAND: &str = "AWS-StartNonInteractiveCommand";
/// ECS Exec's command on the container's terminal.
pub const ECS_EXEC: &str = "AmazonECS-ExecuteInteractiveCommand";
