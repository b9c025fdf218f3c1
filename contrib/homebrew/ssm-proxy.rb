# Homebrew formula template for ssm-proxy. Fill in the release URL and its sha256
# (`shasum -a 256 ssm-proxy-VERSION.tar.gz`), then put it in your tap:
#   brew tap-new me/tools && cp ssm-proxy.rb "$(brew --repo me/tools)/Formula/"
#   brew install me/tools/ssm-proxy
class SsmProxy < Formula
  desc "AWS Systems Manager Session Manager as an ssh ProxyCommand, in one binary"
  homepage "https://example.invalid/ssm-proxy"  # TODO: the project's home page
  url "https://example.invalid/ssm-proxy/archive/refs/tags/vVERSION.tar.gz"  # TODO
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"  # TODO
  license "Apache-2.0"

  depends_on "rust" => :build

  def install
    system "cargo", "install", *std_cargo_args
    generate_completions_from_executable(bin/"ssm-proxy", "completions")
    (man1/"ssm-proxy.1").write Utils.safe_popen_read(bin/"ssm-proxy", "man")
  end

  def caveats
    <<~EOS
      Add a Host block to ~/.ssh/config:
        ssm-proxy ssh-config >> ~/.ssh/config
      To serve `aws ssm start-session` too (instead of session-manager-plugin):
        ln -s #{opt_bin}/ssm-proxy #{HOMEBREW_PREFIX}/bin/session-manager-plugin
    EOS
  end

  test do
    ln_s bin/"ssm-proxy", testpath/"session-manager-plugin"
    assert_equal "1.2.707.0", shell_output("#{testpath}/session-manager-plugin --version").strip
    assert_match "Host i-* mi-*", shell_output("#{bin}/ssm-proxy ssh-config")
  end
end
