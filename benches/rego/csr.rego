# The default bundle's CSR rule for the kubernetes.io/kubelet-serving signer (csr-approval's
# kubelet-serving profile with its default key rules), in Rego, for the peer benchmark
# (benches/peers.rs). Input: rotor's CSR request as JSON (the same serde form the CLI reads).
# Output `decision`: {"action": "approve" | "deny", "codes": [...], "reason"}. rotor's answer
# for the same input is checked equal before any timing.
package rotor.csr

allowed_usages := {"server auth", "digital signature", "key encipherment"}

max_expiration := 367 * 86400

min_expiration := 600

node_label := `[a-z0-9]([-a-z0-9]*[a-z0-9])?`

node_of(username) := name if {
	startswith(username, "system:node:")
	name := substring(username, count("system:node:"), -1)
	count(name) <= 253
	regex.match(sprintf(`^%s(\.%s)*$`, [node_label, node_label]), name)
}

violations contains "RequesterNotANode" if not node_of(input.username)

violations contains "RequesterNotInNodesGroup" if {
	node_of(input.username)
	not "system:nodes" in input.groups
}

violations contains "CommonNameMismatch" if {
	node_of(input.username)
	input.subject.common_name != input.username
}

violations contains "CommonNameMismatch" if {
	node_of(input.username)
	not input.subject.common_name
}

violations contains "OrganizationMismatch" if input.subject.organizations != ["system:nodes"]

violations contains "SubjectAttributeNotAllowed" if {
	count(input.subject.organizational_units) + count(input.subject.other_attributes) > 0
}

violations contains "SanTypeNotAllowed" if count(input.sans.emails) + count(input.sans.uris) + count(input.sans.others) > 0

violations contains "NoSubjectAltNames" if count(input.sans.dns_names) + count(input.sans.ip_addresses) == 0

violations contains "CaNotAllowed" if input.requests_ca

key_ok if {
	input.public_key.algorithm == "rsa"
	input.public_key.bits >= 2048
	input.public_key.bits <= 8192
	input.public_key.bits % 8 == 0
}

key_ok if input.public_key.algorithm in {"ecdsa-p256", "ecdsa-p384", "ed25519"}

violations contains "KeyNotAllowed" if not key_ok

violations contains "UsageMissing" if not "server auth" in input.usages

violations contains "UsageNotAllowed" if {
	some u in input.usages
	not u in allowed_usages
}

violations contains "ExpirationTooShort" if {
	is_number(input.expiration_seconds)
	input.expiration_seconds < min_expiration
}

violations contains "ExpirationTooLong" if {
	is_number(input.expiration_seconds)
	input.expiration_seconds > max_expiration
}

decision := {"action": "deny", "codes": sort(violations), "reason": ""} if {
	count(violations) > 0
} else := {"action": "approve", "codes": [], "reason": sprintf("%s request from '%s' satisfies the profile", [input.signer_name, input.username])}
