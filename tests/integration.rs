mod e2e_errors;
mod e2e_faults;
mod e2e_ssh;
mod golden;
mod session;
mod support;
mod sweep;
