# The default bundle's SAN rule for the kubelet-serving profile (san-validation with
# policies/default's [san.settings.profiles.kubelet-serving]), in Rego, for the peer benchmark
# (benches/peers.rs). Input: rotor's SAN request as JSON (the same serde form the CLI reads).
# Output `violations`: a set of {"code", "field"}; empty means allow. rotor's answer for the same
# input is checked equal before any timing.
package rotor.san

max_sans := 100

max_dns_names := 2

ip_deny := ["0.0.0.0/8", "::/128", "127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10", "224.0.0.0/4", "ff00::/8", "255.255.255.255/32"]

dns_names := {lower(n) | some n in input.sans.dns_names}

ips := {ip | some ip in input.sans.ip_addresses}

total := (((count(dns_names) + count(ips)) + count(input.sans.uris)) + count(input.sans.emails)) + count(input.sans.others)

label := `[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?`

valid_dns(n) if {
	count(n) <= 253
	regex.match(sprintf(`^%s(\.%s)*$`, [label, label]), n)
}

violations contains {"code": "NoSubjectAltNames", "field": "subjectAltName"} if {
	count(dns_names) + count(ips) == 0
}

violations contains {"code": "TooManySans", "field": "subjectAltName"} if total > max_sans

violations contains {"code": "TooManyDnsNames", "field": "subjectAltName"} if count(dns_names) > max_dns_names

violations contains {"code": "SanTypeNotAllowed", "field": o} if some o in input.sans.others

violations contains {"code": "NodeIdentityMissing", "field": ""} if not input.node

violations contains {"code": "NoNodeEvidence", "field": input.node.name} if count(input.node.addresses) == 0

violations contains {"code": "InvalidDnsName", "field": n} if {
	some n in dns_names
	not valid_dns(n)
}

violations contains {"code": "LiteralWildcardNotAllowed", "field": n} if {
	some n in dns_names
	startswith(n, "*.")
}

violations contains {"code": "SanNotBoundToNode", "field": n} if {
	some n in dns_names
	valid_dns(n)
	n != lower(input.node.name)
}

ip_denied(ip) if {
	some cidr in ip_deny
	net.cidr_contains(cidr, ip)
}

violations contains {"code": "IpDenied", "field": ip} if {
	some ip in ips
	ip_denied(ip)
}

violations contains {"code": "IpNotInNodeEvidence", "field": ip} if {
	some ip in ips
	not ip_denied(ip)
	not ip in input.node.addresses
}

# Types without allow rules are denied.
violations contains {"code": "EmailNotAllowed", "field": e} if some e in input.sans.emails

violations contains {"code": "UriNotAllowed", "field": u} if some u in input.sans.uris
