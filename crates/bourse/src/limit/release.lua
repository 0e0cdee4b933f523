-- Give a lease back: KEYS are the leases ZSETs of its scopes (those with a concurrency
-- limit), ARGV[1] the lease id.
for _, key in ipairs(KEYS) do
  redis.call('ZREM', key, ARGV[1])
end
return 1
