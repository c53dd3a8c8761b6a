# The default bundle's renewal rule (renewal-window, window mode, renew_before_days = 90), in
# Rego, for the peer benchmark (benches/peers.rs). Input: the lean 0.2 renewal request in Unix
# seconds: {"is_ca", "not_before", "not_after", "now"}. Output `decision`: {"action": "keep" |
# "renew", "reason", "renew_at"}; rotor's answer for the same input is checked equal before any
# timing.
package rotor.renewal

day := 86400

window_days := 90

window := window_days * day

backdate := 3600

min_age := 300

date(ts) := time.format(ts * 1000000000)

span(secs) := sprintf("%d days", [floor(secs / day)]) if {
	secs >= 2 * day
} else := sprintf("%d hours", [floor(secs / 3600)]) if {
	secs >= 7200
} else := sprintf("%d minutes", [floor(secs / 60)]) if {
	secs >= 120
} else := sprintf("%d seconds", [max([secs, 0])])

# The loop guard: a certificate younger than a tenth of its life (at least 5 minutes) since
# notBefore plus the issuer's backdate is never renewed by the window alone.
issued := min([input.not_before + backdate, input.not_after])

guard := issued + max([floor(((input.not_after - issued) * 100000) / 1000000), min_age])

left := input.not_after - input.now

# The window is as long as the certificate's life: renew at 2/3 of the lifetime instead.
two_thirds := min([
	max([input.not_before + floor(((input.not_after - input.not_before) * 2) / 3), guard]),
	input.not_after,
])

how := sprintf("the %d-day renewal window is not shorter than the %s lifetime, so 2/3 of the lifetime", [window_days, span(input.not_after - input.not_before)])

decision := {"action": "keep", "reason": "CA certificate: CAs are never renewed automatically (rotate them with 'rotor certificate rotate-ca')", "renew_at": null} if {
	input.is_ca
} else := {"action": "renew", "reason": sprintf("invalid validity period: notAfter %s is not after notBefore %s", [date(input.not_after), date(input.not_before)]), "renew_at": null} if {
	input.not_after <= input.not_before
} else := {"action": "renew", "reason": sprintf("expired on %s (%s ago)", [date(input.not_after), span(input.now - input.not_after)]), "renew_at": null} if {
	input.now >= input.not_after
} else := {"action": "renew", "reason": sprintf("renewal time %s reached (%s)", [date(two_thirds), how]), "renew_at": null} if {
	input.not_after - window < guard
	input.now >= two_thirds
} else := {"action": "keep", "reason": sprintf("expires on %s (in %s); renewal due on %s (%s)", [date(input.not_after), span(left), date(two_thirds), how]), "renew_at": two_thirds} if {
	input.not_after - window < guard
} else := {"action": "renew", "reason": sprintf("expires on %s (in %s), within the %d-day renewal window", [date(input.not_after), span(left), window_days]), "renew_at": null} if {
	left <= window
} else := {"action": "keep", "reason": sprintf("expires on %s (in %s), outside the %d-day renewal window", [date(input.not_after), span(left), window_days]), "renew_at": input.not_after - window}
